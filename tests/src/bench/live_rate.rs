//! Live forwarding rate on veth: frames generated in the kernel (BPF_PROG_TEST_RUN
//! in live-frames mode), forwarded by the XDP program under test with XDP_TX,
//! counted and dropped by a sink XDP program. stickylb in each forwarding
//! mode (DSR, IP-in-IP, GUE), the floor forwarder (tests/bench-ebpf's
//! `floor-fwd`) and the encapsulating floor (`floor-encap`) run on the same
//! wire, one after the other.
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
//!
//! The tunnel modes take their next hop from the kernel's FIB: l0 has an
//! address and forwarding on, and the backends' subnet is routed via g0's
//! address, whose (permanent) neighbour entry is g0's MAC. The FIB's egress
//! interface is then l0 itself, so the encapsulated frames leave by XDP_TX
//! to the sink too.

use std::{
    net::Ipv4Addr,
    sync::{
        Barrier,
        atomic::{AtomicU32, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray},
    programs::{Xdp, XdpMode},
};
use bench_ebpf::{GenConfig, map_names, program_names, sink_counter};
use lb_common::{
    DEFAULT_AFFINITY_TIMEOUT_NS, DEFAULT_GUE_PORT, DEFAULT_TUNNEL_TTL, ForwardingMode,
    IPIP_OVERHEAD, TunnelSettings, VipKey, VipStats, global_counter, proto,
};
use lb_user::dataplane::AttachMode;
use serde_json::json;

use super::{
    Ctx, Plot, Section, Table,
    objects::{self, RefProgram, Reference},
    plot, progress,
    xdp_cost::{
        FRAME_LEN, Lb, VIP_PORT, VipSpec, XDP_TX, client_addr, err, pin_to_last_cpu, udp64,
    },
};
use crate::{
    LB_MAC, VIP, backend_addr,
    fibnet::BACKEND_NET,
    netns::{Netns, Reaper, wait_for},
};

/// MAC of the generator's (and sink's) interface g0.
const GEN_MAC: [u8; 6] = [0x02, 0x67, 0x65, 0x6e, 0x00, 0x01];
/// The backend's MAC: not g0's, since the program drops a frame it would
/// send back to the MAC it came from. XDP_TX on l0 delivers every frame to
/// g0 whatever its destination MAC, where the sink counts it.
const BACKEND_MAC: [u8; 6] = [0x02, 0x67, 0x65, 0x6e, 0x00, 0x02];
/// l0's address: the tunnel modes' outer source.
const LB_ADDR: Ipv4Addr = Ipv4Addr::new(10, 97, 0, 1);
/// g0's address: the gateway of the LB's route to the backends' subnet, so
/// that the FIB's next hop is the sink's MAC.
const GEN_ADDR: Ipv4Addr = Ipv4Addr::new(10, 97, 0, 2);
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

/// The sink, loaded here rather than as a `RefProgram` (which only sums its
/// counters): the scaling case needs them CPU by CPU.
struct Sink(Ebpf);

impl Sink {
    /// Loads the sink and attaches it in driver mode to `iface` of the
    /// calling thread's namespace, for as long as it lives.
    fn attach(iface: &str) -> Result<Self, String> {
        let mut ebpf = Ebpf::load(objects::SINK).map_err(err("load the sink"))?;
        let prog: &mut Xdp = ebpf
            .program_mut(program_names::SINK)
            .ok_or("the sink's object has no sink program")?
            .try_into()
            .map_err(err("the sink's program"))?;
        prog.load().map_err(err("load the sink"))?;
        prog.attach(iface, XdpMode::Driver)
            .map_err(err(format!("attach the sink to {iface} (driver mode)")))?;
        Ok(Self(ebpf))
    }

    /// Counter `index` (`sink_counter::*`) of every possible CPU, by CPU
    /// number.
    fn per_cpu(&self, index: u32) -> Result<Vec<u64>, String> {
        let map = self
            .0
            .map(map_names::SINK_COUNT)
            .ok_or("the sink has no counter map")?;
        let arr: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(map).map_err(err("open the sink's counters"))?;
        let values = arr
            .get(&index, 0)
            .map_err(err("read the sink's counters"))?;
        Ok(values.to_vec())
    }
}

/// The two namespaces and the sink. Field order is drop order: the sink is
/// detached, then the namespaces (and with them the veth pair) deleted.
struct Wire {
    sink: Sink,
    gen_ifindex: u32,
    /// l0's index in the LB's namespace.
    lb_ifindex: u32,
    lb: Netns,
    gen_ns: Netns,
    /// Removes the namespaces if this process dies without unwinding.
    _reaper: Reaper,
}

impl Wire {
    /// `queues`: the tx and rx queues of each end of the veth pair.
    fn up(queues: u32) -> Result<Self, String> {
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
        let q = queues.to_string();
        gen_ns.ip(&[
            "link",
            "add",
            "g0",
            "address",
            &mac_str(GEN_MAC),
            "numtxqueues",
            &q,
            "numrxqueues",
            &q,
            "type",
            "veth",
            "peer",
            "name",
            "l0",
            "address",
            &mac_str(LB_MAC),
            "numtxqueues",
            &q,
            "numrxqueues",
            &q,
            "netns",
            &lb.name,
        ])?;
        gen_ns.ip(&["link", "set", "g0", "up"])?;
        lb.ip(&["link", "set", "l0", "up"])?;
        gen_ns.ip(&["addr", "add", &format!("{GEN_ADDR}/24"), "dev", "g0"])?;
        // The tunnel modes' next hop: the kernel's FIB, which the helper only
        // consults for an interface with forwarding on; a permanent neighbour
        // entry, so that no ARP ever crosses the wire.
        lb.ip_batch(&[
            format!("addr add {LB_ADDR}/24 dev l0"),
            format!(
                "neigh replace {GEN_ADDR} lladdr {} dev l0 nud permanent",
                mac_str(GEN_MAC)
            ),
            format!("route add {BACKEND_NET} via {GEN_ADDR} dev l0"),
        ])?;
        lb.sysctl("net.ipv4.conf.l0.forwarding", "1")?;
        let lb_ifindex = lb.enter(|| ifindex(c"l0"))?;
        let (sink, gen_ifindex) = gen_ns.enter(|| -> Result<(Sink, u32), String> {
            Ok((Sink::attach("g0")?, ifindex(c"g0")?))
        })?;
        Ok(Self {
            sink,
            gen_ifindex,
            lb_ifindex,
            lb,
            gen_ns,
            _reaper: reaper,
        })
    }

    /// Frames and bytes the sink received.
    fn sink_counts(&self) -> Result<(u64, u64), String> {
        let sum = |i| self.sink.per_cpu(i).map(|v| v.iter().sum());
        Ok((sum(sink_counter::FRAMES)?, sum(sink_counter::BYTES)?))
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

    /// One live-frames call of `frames` frames on g0 by each of the first
    /// `cpus.len()` generators, `gens[i]` from a thread of its own pinned to
    /// `cpus[i]`, all started together. All the generators back, the
    /// kernel's mean time per frame of each call (in the order of `cpus`),
    /// and the time from the first call's start to the last one's end.
    fn generate_on(
        &self,
        mut gens: Vec<RefProgram>,
        cpus: &[usize],
        frame: &[u8],
        frames: u32,
    ) -> Result<(Vec<RefProgram>, Vec<Duration>, Duration), String> {
        if gens.len() < cpus.len() {
            return Err(format!("{} generators for {} CPUs", gens.len(), cpus.len()));
        }
        let ifindex = self.gen_ifindex;
        let frame = frame.to_vec();
        let idle = gens.split_off(cpus.len());
        let cpus = cpus.to_vec();
        // Threads spawned in the namespace stay in it.
        self.gen_ns.enter(move || {
            let start = Barrier::new(cpus.len());
            let done = thread::scope(|s| {
                let threads: Vec<_> = gens
                    .into_iter()
                    .zip(cpus)
                    .map(|(mut g, cpu)| {
                        let (start, frame) = (&start, &frame);
                        s.spawn(move || {
                            let pinned = pin_to(cpu);
                            // Every thread reaches the barrier, pinned or not,
                            // or the others would wait for ever.
                            start.wait();
                            pinned?;
                            let t = Instant::now();
                            let per_frame =
                                g.run_live(frame, ifindex, frames, BATCH)
                                    .map_err(err(format!(
                                        "BPF_PROG_TEST_RUN live frames on g0 from CPU {cpu}"
                                    )))?;
                            Ok::<_, String>((g, per_frame, t, Instant::now()))
                        })
                    })
                    .collect();
                threads
                    .into_iter()
                    .map(|t| {
                        t.join()
                            .map_err(|_| "a generator thread panicked".to_string())?
                    })
                    .collect::<Result<Vec<_>, String>>()
            })?;
            let first = done.iter().map(|d| d.2).min().ok_or("no generator")?;
            let last = done.iter().map(|d| d.3).max().ok_or("no generator")?;
            let per_frame = done.iter().map(|d| d.1).collect();
            let mut gens: Vec<RefProgram> = done.into_iter().map(|d| d.0).collect();
            gens.extend(idle);
            Ok((gens, per_frame, last - first))
        })
    }

    /// Frames the sink received on each CPU, by CPU number.
    fn sink_frames_per_cpu(&self) -> Result<Vec<u64>, String> {
        self.sink.per_cpu(sink_counter::FRAMES)
    }
}

/// Pins the calling thread to `cpu`.
fn pin_to(cpu: usize) -> Result<(), String> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET stays within
    // it for any cpu < CPU_SETSIZE (checked); sched_setaffinity(0) affects
    // this thread.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if cpu >= libc::CPU_SETSIZE as usize {
            return Err(format!("no CPU {cpu}"));
        }
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(format!(
            "pin a generator thread to CPU {cpu}: {}",
            std::io::Error::last_os_error()
        ))
    }
}

/// The index of interface `name` in the calling thread's namespace.
fn ifindex(name: &std::ffi::CStr) -> Result<u32, String> {
    // SAFETY: a valid NUL-terminated name.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => Err(format!("{name:?} has no ifindex")),
        i => Ok(i),
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Subject {
    Stickylb(ForwardingMode),
    Floor,
    FloorEncap,
}

/// The order of the runs of one client count: each reference right before
/// the modes measured against it.
const SUBJECTS: [Subject; 5] = [
    Subject::Floor,
    Subject::Stickylb(ForwardingMode::Dsr),
    Subject::FloorEncap,
    Subject::Stickylb(ForwardingMode::Ipip),
    Subject::Stickylb(ForwardingMode::Gue),
];

impl Subject {
    fn name(self) -> &'static str {
        match self {
            Self::Stickylb(ForwardingMode::Dsr) => "stickylb DSR",
            Self::Stickylb(ForwardingMode::Ipip) => "stickylb ipip",
            Self::Stickylb(ForwardingMode::Gue) => "stickylb gue",
            Self::Floor => "floor forwarder",
            Self::FloorEncap => "floor-encap",
        }
    }

    /// The reference a stickylb mode is compared with: the floor
    /// forwarder for DSR, the encapsulating floor for the tunnel modes.
    fn reference(self) -> Option<Self> {
        match self {
            Self::Stickylb(m) if m.is_tunnel() => Some(Self::FloorEncap),
            Self::Stickylb(_) => Some(Self::Floor),
            Self::Floor | Self::FloorEncap => None,
        }
    }

    /// Bytes every frame of this forwarder must have at the sink.
    fn frame_len_out(self) -> u64 {
        FRAME_LEN as u64
            + u64::from(match self {
                Self::Stickylb(m) => m.overhead(),
                Self::Floor => 0,
                Self::FloorEncap => IPIP_OVERHEAD,
            })
    }
}

/// The tunnel settings of the tunnel runs: l0's address, the defaults.
fn tunnel_settings() -> TunnelSettings {
    TunnelSettings {
        src_addr: LB_ADDR.octets(),
        src_prefix: [0; 4],
        src_prefix_len: 0,
        ttl: DEFAULT_TUNNEL_TTL,
        gue_port: DEFAULT_GUE_PORT.to_be_bytes(),
        _pad: [0; 4],
    }
}

/// The program under test, attached to l0 for as long as it lives.
enum Forwarder {
    Stickylb(Box<Lb>),
    /// Held only to keep it attached.
    Reference {
        _attached: RefProgram,
    },
}

fn attach(wire: &Wire, subject: Subject, k: &Knobs) -> Result<Forwarder, String> {
    match subject {
        Subject::Stickylb(mode) => {
            let vip = VipSpec {
                key: VipKey::new(VIP, VIP_PORT, proto::UDP),
                id: 0,
                timeout_ns: DEFAULT_AFFINITY_TIMEOUT_NS,
            };
            // One backend, alive: in DSR the sink's interface; in the tunnel
            // modes an address of the routed subnet behind g0.
            let mut lb = Lb::load(k.capacity, &[BACKEND_MAC], std::slice::from_ref(&vip))?;
            if mode.is_tunnel() {
                lb.set_forwarding(&vip, mode)?;
                lb.dp
                    .set_tunnel(tunnel_settings())
                    .map_err(err("write the tunnel settings"))?;
            }
            let ifindex = wire.lb_ifindex;
            wire.lb.enter(move || {
                let mut lb = lb;
                if mode.is_tunnel() {
                    check_sample(&mut lb, mode, ifindex)?;
                }
                lb.dp
                    .attach("l0", AttachMode::Driver)
                    .map_err(err("attach stickylb to l0 (driver mode)"))?;
                Ok(Forwarder::Stickylb(Box::new(lb)))
            })
        }
        Subject::Floor | Subject::FloorEncap => wire.lb.enter(move || {
            let (which, name) = if subject == Subject::Floor {
                (Reference::FloorFwd, "floor-fwd")
            } else {
                (Reference::FloorEncap, "floor-encap")
            };
            let mut p = RefProgram::load(which).map_err(err(format!("load {name}")))?;
            p.attach("l0", AttachMode::Driver)
                .map_err(err(format!("attach {name} to l0 (driver mode)")))?;
            Ok(Forwarder::Reference { _attached: p })
        }),
    }
}

/// One frame through the loaded program, arriving on l0 (a test run from
/// the LB's namespace, where its FIB lookup is made): it must leave by
/// XDP_TX to g0's MAC, encapsulated as the mode says, toward the backend,
/// with the client's packet unchanged behind the outer header.
fn check_sample(lb: &mut Lb, mode: ForwardingMode, ifindex: u32) -> Result<(), String> {
    let frame = udp64(GEN_MAC, LB_MAC, client_addr(0), VIP, VIP_PORT);
    let (action, out) = lb
        .dp
        .test_run_from(&frame, ifindex)
        .map_err(err("BPF_PROG_TEST_RUN stickylb from l0"))?;
    let ovh = mode.overhead() as usize;
    let mut why = Vec::new();
    if action != XDP_TX {
        why.push(format!("action {action}, not XDP_TX"));
    }
    if out.len() != frame.len() + ovh {
        why.push(format!("{} bytes out of {} in", out.len(), frame.len()));
    } else {
        let (proto_out, udp_dst) = match mode {
            ForwardingMode::Gue => (proto::UDP, Some(DEFAULT_GUE_PORT)),
            _ => (proto::IPIP, None),
        };
        if out[..6] != GEN_MAC || out[6..12] != LB_MAC {
            why.push("MACs not the FIB's (g0's neighbour entry, l0's own)".into());
        }
        if out[14] != 0x45 || out[23] != proto_out {
            why.push(format!("outer IPv4 {:#04x}, protocol {}", out[14], out[23]));
        }
        if out[26..30] != LB_ADDR.octets() || out[30..34] != backend_addr(0).octets() {
            why.push(format!(
                "outer addresses {:?} → {:?}",
                &out[26..30],
                &out[30..34]
            ));
        }
        if let Some(port) = udp_dst
            && out[36..38] != port.to_be_bytes()
        {
            why.push(format!("UDP destination {:?}", &out[36..38]));
        }
        if out[14 + ovh..] != frame[14..] {
            why.push("inner packet changed".into());
        }
    }
    if why.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "stickylb {mode:?}: a sample frame was not encapsulated as expected: {}",
            why.join("; ")
        ))
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
    /// stickylb: frames it dropped (every reason) during the timed run.
    dropped: Option<u64>,
    received: u64,
    /// Bytes the sink received.
    received_bytes: u64,
    seconds: f64,
    kernel_ns_per_frame: f64,
}

impl Run {
    fn mpps(&self) -> f64 {
        self.received as f64 / self.seconds / 1e6
    }

    fn bytes_per_frame(&self) -> f64 {
        self.received_bytes as f64 / self.received.max(1) as f64
    }

    fn loss_pct(&self) -> f64 {
        if self.generated == 0 {
            return 0.0;
        }
        (self.generated.saturating_sub(self.received)) as f64 * 100.0 / self.generated as f64
    }
}

/// Every reason the program drops a frame.
fn drops(s: &VipStats) -> u64 {
    s.drop_no_backend
        + s.drop_fragment
        + s.drop_loop
        + s.drop_no_neigh
        + s.drop_no_route
        + s.drop_too_big
        + s.too_big_icmp
}

/// Frames stickylb passed to the stack (any reason): none of the
/// generated frames may be.
fn passed(lb: &Lb) -> Result<u64, String> {
    lb.dp
        .global_stats()
        .map(|g| {
            g.iter()
                .zip(global_counter::NAMES)
                .filter(|(_, name)| name.starts_with("pass_"))
                .map(|(n, _)| n)
                .sum()
        })
        .map_err(err("read stickylb's global counters"))
}

/// The sink's frames and bytes once they stop moving.
fn settle(wire: &Wire) -> Result<(u64, u64), String> {
    // Frames still in a veth ring are delivered within microseconds; wait
    // until the count stops moving.
    let mut last = wire.sink_counts()?;
    let mut stable = 0;
    wait_for(Duration::from_secs(2), || {
        thread::sleep(Duration::from_millis(20));
        let now = wire.sink_counts().unwrap_or(last);
        stable = if now == last { stable + 1 } else { 0 };
        last = now;
        stable >= 3
    });
    Ok(last)
}

/// That the frames of a timed run took the path measured: every frame at
/// the sink (`sink`: frames and bytes received) has the length of the
/// forwarder's output (encapsulated or not), stickylb (`lb`: its VIP
/// counters and its frames passed to the stack during the run) forwarded
/// frames and dropped and passed none, and most generated frames arrived.
fn check_path(
    subject: Subject,
    generated: u64,
    (frames_in, bytes_in): (u64, u64),
    lb: Option<(VipStats, u64)>,
) -> Result<(), String> {
    if frames_in == 0 || bytes_in != frames_in * subject.frame_len_out() {
        return Err(format!(
            "{}: the sink received {frames_in} frames of {bytes_in} bytes, not {} bytes each",
            subject.name(),
            subject.frame_len_out()
        ));
    }
    if let Some((d, passed_by_lb)) = &lb
        && (d.packets == 0 || drops(d) != 0 || *passed_by_lb != 0)
    {
        return Err(format!(
            "{}: stickylb forwarded {} frames, dropped {} ({d:?}) and passed {passed_by_lb} \
             to the stack",
            subject.name(),
            d.packets,
            drops(d)
        ));
    }
    // The wire loses no frame when it works (all of it runs in one softirq,
    // see the method): most of them lost means the frames did not take the
    // path measured (and the figures would mean nothing).
    if frames_in * 2 < generated {
        return Err(format!(
            "{}: only {frames_in} of {generated} generated frames reached the sink",
            subject.name()
        ));
    }
    Ok(())
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
        Forwarder::Stickylb(lb) => Some((lb.stats(0)?, passed(lb)?)),
        Forwarder::Reference { .. } => None,
    };
    let (g2, wall, per_frame) = wire.generate(g, &frame, frames)?;
    g = g2;
    let s1 = settle(wire)?;
    let gen1 = g.gen_count().map_err(err("read the generator's count"))?;
    let v1 = match &fwd {
        Forwarder::Stickylb(lb) => Some((lb.stats(0)?, passed(lb)?)),
        Forwarder::Reference { .. } => None,
    };
    drop(fwd);
    let generated = gen1 - gen0;
    if generated != u64::from(frames) {
        return Err(format!(
            "the generator ran {generated} times for {frames} frames asked"
        ));
    }
    let d = v0.zip(v1).map(|(a, b)| b.0.since(&a.0));
    let (frames_in, bytes_in) = (s1.0 - s0.0, s1.1 - s0.1);
    check_path(
        subject,
        generated,
        (frames_in, bytes_in),
        v0.zip(v1).map(|(a, b)| (b.0.since(&a.0), b.1 - a.1)),
    )?;
    Ok((
        g,
        Run {
            subject,
            clients,
            generated,
            forwarded: d.as_ref().map(|d| d.packets),
            new_clients: d.as_ref().map(|d| d.new_clients),
            hits: d.as_ref().map(|d| d.affinity_hits),
            dropped: d.as_ref().map(drops),
            received: frames_in,
            received_bytes: bytes_in,
            seconds: wall.as_secs_f64(),
            kernel_ns_per_frame: per_frame.as_nanos() as f64,
        },
    ))
}

fn measure(k: &Knobs) -> Result<Vec<Run>, String> {
    progress("live: building the veth pair and loading the sink");
    let wire = Wire::up(1)?;
    let mut g = RefProgram::load(Reference::Gen).map_err(err("load the generator"))?;
    let mut runs = Vec::new();
    for &n in k.clients {
        for subject in SUBJECTS {
            let (g2, run) = one_case(&wire, g, subject, n, k)?;
            g = g2;
            runs.push(run);
        }
    }
    Ok(runs)
}

/// The two CPUs of the scaling case. veth's XDP transmit queues a frame on
/// the peer's rx queue numbered by the sending CPU modulo the queue count,
/// and schedules that queue's NAPI on the sending CPU: with two queues, a
/// frame generated on CPU 0 or 1 is forwarded and sunk on that CPU, on a
/// queue of its own.
const SCALING_CPUS: [usize; 2] = [0, 1];
/// The length of every timed run of the scaling case (three per
/// forwarder), in quick and full mode alike: it stays a few seconds.
const SCALING_SECS: f64 = 1.0;
/// As many clients as the smallest count of the main table.
const SCALING_CLIENTS: u32 = 1_000;
const SCALING_SUBJECTS: [Subject; 2] = [Subject::Floor, Subject::Stickylb(ForwardingMode::Dsr)];
/// The least share of the frames each CPU must have handled in the
/// two-core run for it to count as one (an even split is 50 %).
const MIN_CPU_SHARE: f64 = 0.25;

/// One timed run of the scaling case.
struct ScaleRun {
    /// The generator threads' CPUs.
    cpus: Vec<usize>,
    generated: u64,
    received: u64,
    /// Frames the sink received on each of `SCALING_CPUS`.
    on_cpu: [u64; 2],
    seconds: f64,
    /// The kernel's mean time per frame of each thread's call. It counts
    /// only the time the call was on its CPU (it stops its clock when it
    /// yields the CPU), and the forwarding and the sink too (they run in
    /// the softirq the call raises, within its clock).
    kernel_ns_per_frame: Vec<f64>,
}

impl ScaleRun {
    fn mpps(&self) -> f64 {
        self.received as f64 / self.seconds / 1e6
    }

    /// The rate had each thread had its CPU to itself: the sum of the
    /// threads' rates by the kernel's clock, times the fraction received.
    fn on_cpu_mpps(&self) -> f64 {
        let generated: f64 = self
            .kernel_ns_per_frame
            .iter()
            .map(|ns| 1e3 / ns.max(1.0))
            .sum();
        generated * self.received as f64 / self.generated.max(1) as f64
    }

    fn share(&self, i: usize) -> f64 {
        self.on_cpu[i] as f64 / self.received.max(1) as f64
    }

    fn loss_pct(&self) -> f64 {
        self.generated.saturating_sub(self.received) as f64 * 100.0 / self.generated.max(1) as f64
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "generator_cpus": self.cpus,
            "generated": self.generated,
            "received_at_sink": self.received,
            "received_per_cpu": self.on_cpu,
            "cpu_shares": [self.share(0), self.share(1)],
            "seconds": self.seconds,
            "mpps_at_sink": self.mpps(),
            "on_cpu_mpps": self.on_cpu_mpps(),
            "kernel_ns_per_generated_frame": self.kernel_ns_per_frame,
            "loss_pct": self.loss_pct(),
        })
    }
}

/// One forwarder on one core (each of the two in turn) and on both.
struct Scaling {
    subject: Subject,
    /// On `SCALING_CPUS[0]`, then on `SCALING_CPUS[1]`.
    one: [ScaleRun; 2],
    two: ScaleRun,
    /// The 1-minute load average after the runs: how much else wanted the
    /// CPUs meanwhile.
    load_1min: Option<f64>,
}

impl Scaling {
    /// The one-core rate: the mean of the two CPUs', so that a CPU busier
    /// with other work than the other weighs on both sides of the ratio.
    fn mpps_1c(&self) -> f64 {
        (self.one[0].mpps() + self.one[1].mpps()) / 2.0
    }

    fn ratio(&self) -> f64 {
        self.two.mpps() / self.mpps_1c()
    }

    fn on_cpu_1c(&self) -> f64 {
        (self.one[0].on_cpu_mpps() + self.one[1].on_cpu_mpps()) / 2.0
    }

    fn on_cpu_ratio(&self) -> f64 {
        self.two.on_cpu_mpps() / self.on_cpu_1c()
    }
}

/// The scaling case, on a wire of its own with two queues per end: each
/// forwarder on one core (one generator thread, all the clients), then on
/// two (two threads started together, each with half of the clients, as
/// RSS keeps a client on one CPU). `None` on a machine with one CPU.
fn measure_scaling() -> Result<Option<Vec<Scaling>>, String> {
    if thread::available_parallelism().map_or(1, |n| n.get()) < SCALING_CPUS.len() {
        return Ok(None);
    }
    progress("live: building a veth pair with 2 queues for the scaling case");
    let wire = Wire::up(SCALING_CPUS.len() as u32)?;
    let mut gens = (0..SCALING_CPUS.len())
        .map(|_| RefProgram::load(Reference::Gen).map_err(err("load a generator")))
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = Vec::new();
    for subject in SCALING_SUBJECTS {
        let (g2, sc) = scaling_case(&wire, gens, subject)?;
        gens = g2;
        out.push(sc);
    }
    Ok(Some(out))
}

/// The 1-minute load average (`/proc/loadavg`), if readable.
fn load_1min() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn scaling_case(
    wire: &Wire,
    mut gens: Vec<RefProgram>,
    subject: Subject,
) -> Result<(Vec<RefProgram>, Scaling), String> {
    progress(format!(
        "live: {} on 1 core, then 2 ({SCALING_CLIENTS} clients, 3 × {SCALING_SECS} s)",
        subject.name()
    ));
    // Affinity capacity as in the quick runs: 1k clients need little.
    let fwd = attach(wire, subject, &Knobs::new(true))?;
    let config = |base: u32, clients: u32| GenConfig {
        dst_mac: LB_MAC,
        src_mac: GEN_MAC,
        client_base: client_addr(base),
        clients,
    };
    let frame = udp64(GEN_MAC, LB_MAC, client_addr(0), VIP, VIP_PORT);
    // One timed run: `clients[i]` (base, count) for the generator on
    // `cpus[i]`; checks the path and, on two cores, that each did its part.
    let timed = |gens: Vec<RefProgram>,
                 cpus: &[usize],
                 clients: &[(u32, u32)],
                 frames: u32|
     -> Result<(Vec<RefProgram>, ScaleRun), String> {
        let mut gens = gens;
        for (g, &(base, n)) in gens.iter_mut().zip(clients) {
            g.set_gen_config(config(base, n))
                .map_err(err("configure a generator"))?;
        }
        let gen_count = |gens: &[RefProgram]| -> Result<u64, String> {
            gens.iter()
                .map(|g| g.gen_count().map_err(err("read a generator's count")))
                .sum()
        };
        let lb_counts = || match &fwd {
            Forwarder::Stickylb(lb) => Ok(Some((lb.stats(0)?, passed(lb)?))),
            Forwarder::Reference { .. } => Ok::<_, String>(None),
        };
        let s0 = settle(wire)?;
        let (c0, g0, v0) = (wire.sink_frames_per_cpu()?, gen_count(&gens)?, lb_counts()?);
        let n = cpus.len();
        let (gens, per_frame, span) = wire.generate_on(gens, cpus, &frame, frames)?;
        let s1 = settle(wire)?;
        let (c1, g1, v1) = (wire.sink_frames_per_cpu()?, gen_count(&gens)?, lb_counts()?);
        let generated = g1 - g0;
        let asked = u64::from(frames) * n as u64;
        if generated != asked {
            return Err(format!(
                "{}: the generators ran {generated} times for {asked} frames asked",
                subject.name()
            ));
        }
        let sink = (s1.0 - s0.0, s1.1 - s0.1);
        check_path(
            subject,
            generated,
            sink,
            v0.zip(v1).map(|(a, b)| (b.0.since(&a.0), b.1 - a.1)),
        )?;
        let on = |i: usize| {
            let cpu = SCALING_CPUS[i];
            c1.get(cpu).zip(c0.get(cpu)).map_or(0, |(b, a)| b - a)
        };
        let run = ScaleRun {
            cpus: cpus.to_vec(),
            generated,
            received: sink.0,
            on_cpu: [on(0), on(1)],
            seconds: span.as_secs_f64(),
            kernel_ns_per_frame: per_frame.iter().map(|d| d.as_nanos() as f64).collect(),
        };
        if n > 1 && (0..2).any(|i| run.share(i) < MIN_CPU_SHARE) {
            return Err(format!(
                "{} on {n} cores: the sink received {:.1} % of the frames on CPU {} and {:.1} % \
                 on CPU {} (each must have at least {:.0} %): the frames did not spread over \
                 both CPUs",
                subject.name(),
                run.share(0) * 100.0,
                SCALING_CPUS[0],
                run.share(1) * 100.0,
                SCALING_CPUS[1],
                MIN_CPU_SHARE * 100.0
            ));
        }
        Ok((gens, run))
    };

    // Warm-up, every client at least once, then a short run to size the
    // timed ones: one core, all the clients, as in the main table.
    gens[0]
        .set_gen_config(config(0, SCALING_CLIENTS))
        .map_err(err("configure a generator"))?;
    let one = &SCALING_CPUS[..1];
    let (gens, _, _) = wire.generate_on(gens, one, &frame, 100_000)?;
    let (gens, per_frame, _) = wire.generate_on(gens, one, &frame, 300_000)?;
    let ns = (per_frame[0].as_nanos() as f64).max(1.0);
    let frames = (SCALING_SECS * 1e9 / ns).clamp(100_000.0, f64::from(u32::MAX / 4)) as u32;

    let all = [(0, SCALING_CLIENTS)];
    let (gens, one_a) = timed(gens, &SCALING_CPUS[..1], &all, frames)?;
    let (gens, one_b) = timed(gens, &SCALING_CPUS[1..], &all, frames)?;
    let half = SCALING_CLIENTS / 2;
    let (gens, two) = timed(
        gens,
        &SCALING_CPUS,
        &[(0, half), (half, SCALING_CLIENTS - half)],
        frames,
    )?;
    drop(fwd);
    Ok((
        gens,
        Scaling {
            subject,
            one: [one_a, one_b],
            two,
            load_1min: load_1min(),
        },
    ))
}

fn clients_label(n: u32) -> String {
    if n >= 1_000_000 {
        format!("{}M", n / 1_000_000)
    } else {
        format!("{}k", n / 1_000)
    }
}

/// The scaling case's table, JSON and headline.
fn scaling_report(sc: &[Scaling]) -> Result<(Table, serde_json::Value, String), String> {
    let get = |s: Subject| {
        sc.iter()
            .find(|r| r.subject == s)
            .ok_or_else(|| format!("no scaling run of {}", s.name()))
    };
    let (lb, floor) = (
        get(Subject::Stickylb(ForwardingMode::Dsr))?,
        get(Subject::Floor)?,
    );
    let [c0, c1] = SCALING_CPUS;
    let mut table = Table {
        title: format!(
            "Scaling with cores: Mpps received at the sink, {} clients, veth with 2 queues \
             (each CPU runs generator + program under test + sink)",
            clients_label(SCALING_CLIENTS)
        ),
        headers: vec![
            "forwarder".into(),
            format!("1 core: CPU {c0} / CPU {c1}"),
            "1 core (mean)".into(),
            format!("2 cores (CPUs {c0} + {c1})"),
            "2 cores ÷ 1 core".into(),
            "on-CPU: 1 core (mean)".into(),
            "on-CPU: 2 cores".into(),
            "on-CPU: 2 cores ÷ 1 core".into(),
            format!("2 cores: share of CPU {c0} / CPU {c1}"),
            "2 cores ÷ floor forwarder on 2 cores".into(),
            "loss on 2 cores".into(),
            "load average (1 min)".into(),
        ],
        rows: Vec::new(),
    };
    for r in [floor, lb] {
        table.rows.push(vec![
            r.subject.name().into(),
            format!("{:.2} / {:.2}", r.one[0].mpps(), r.one[1].mpps()),
            format!("{:.2}", r.mpps_1c()),
            format!("{:.2}", r.two.mpps()),
            format!("{:.2}×", r.ratio()),
            format!("{:.2}", r.on_cpu_1c()),
            format!("{:.2}", r.two.on_cpu_mpps()),
            format!("{:.2}×", r.on_cpu_ratio()),
            format!(
                "{:.0} % / {:.0} %",
                r.two.share(0) * 100.0,
                r.two.share(1) * 100.0
            ),
            if r.subject == Subject::Floor {
                "–".into()
            } else {
                format!("{:.2}×", r.two.mpps() / floor.two.mpps())
            },
            format!("{:.2} %", r.two.loss_pct()),
            r.load_1min
                .map_or_else(|| "–".into(), |l| format!("{l:.1}")),
        ]);
    }
    let runs = |r: &Scaling| {
        json!({
            "one_core": [r.one[0].json(), r.one[1].json()],
            "two_cores": r.two.json(),
            "load_1min_after": r.load_1min,
        })
    };
    let json = json!({
        "clients": SCALING_CLIENTS,
        "queues": SCALING_CPUS.len(),
        "cpus": SCALING_CPUS,
        "seconds_per_run": SCALING_SECS,
        "min_cpu_share": MIN_CPU_SHARE,
        "stickylb_1c_mpps": lb.mpps_1c(),
        "stickylb_2c_mpps": lb.two.mpps(),
        "stickylb_ratio_2c_1c": lb.ratio(),
        "stickylb_2c_cpu_shares": [lb.two.share(0), lb.two.share(1)],
        "floor_1c_mpps": floor.mpps_1c(),
        "floor_2c_mpps": floor.two.mpps(),
        "floor_ratio_2c_1c": floor.ratio(),
        "floor_2c_cpu_shares": [floor.two.share(0), floor.two.share(1)],
        "stickylb_2c_over_floor_2c": lb.two.mpps() / floor.two.mpps(),
        "stickylb_on_cpu_1c_mpps": lb.on_cpu_1c(),
        "stickylb_on_cpu_2c_mpps": lb.two.on_cpu_mpps(),
        "stickylb_on_cpu_ratio_2c_1c": lb.on_cpu_ratio(),
        "floor_on_cpu_1c_mpps": floor.on_cpu_1c(),
        "floor_on_cpu_2c_mpps": floor.two.on_cpu_mpps(),
        "floor_on_cpu_ratio_2c_1c": floor.on_cpu_ratio(),
        "stickylb_runs": runs(lb),
        "floor_runs": runs(floor),
    });
    let load = sc
        .iter()
        .filter_map(|r| r.load_1min)
        .max_by(f64::total_cmp)
        .map_or_else(String::new, |l| format!(", load average up to {l:.1}"));
    let headline = format!(
        "Live veth, 2 cores ÷ 1 core (veth with 2 queues, {} clients; goal ≥ 1.8×): stickylb DSR \
         {:.2}× ({:.2} → {:.2} Mpps), floor forwarder {:.2}× ({:.2} → {:.2} Mpps); on-CPU \
         (kernel-timed) {:.2}× and {:.2}×; stickylb on 2 cores = {:.2}× the floor forwarder on 2 \
         cores (each CPU also runs the generator and the sink; {} CPUs shared with other \
         work{load})",
        clients_label(SCALING_CLIENTS),
        lb.ratio(),
        lb.mpps_1c(),
        lb.two.mpps(),
        floor.ratio(),
        floor.mpps_1c(),
        floor.two.mpps(),
        lb.on_cpu_ratio(),
        floor.on_cpu_ratio(),
        lb.two.mpps() / floor.two.mpps(),
        thread::available_parallelism().map_or(1, |n| n.get()),
    );
    Ok((table, json, headline))
}

pub fn run(ctx: &Ctx) -> Result<Section, String> {
    let k = Knobs::new(ctx.quick);
    let runs = measure(&k)?;
    let scaling = measure_scaling()?;
    let get = |s: Subject, n: u32| {
        runs.iter()
            .find(|r| r.subject == s && r.clients == n)
            .ok_or_else(|| format!("no run of {} with {n} clients", s.name()))
    };

    let mut summary = Table {
        title: format!(
            "Mpps received at the sink ({FRAME_LEN}-byte frames in; out: the same in DSR and by the \
             floor forwarder, {} bytes in IP-in-IP and by floor-encap, {} in GUE)",
            Subject::FloorEncap.frame_len_out(),
            Subject::Stickylb(ForwardingMode::Gue).frame_len_out()
        ),
        headers: [
            "clients",
            "forwarder",
            "Mpps",
            "its reference",
            "÷ reference",
            "extra ns/packet over the reference",
            "÷ floor forwarder",
            "loss",
        ]
        .map(String::from)
        .to_vec(),
        rows: Vec::new(),
    };
    for &n in k.clients {
        let floor = get(Subject::Floor, n)?;
        for subject in SUBJECTS {
            let r = get(subject, n)?;
            let against = subject.reference().map(|s| get(s, n)).transpose()?;
            summary.rows.push(vec![
                clients_label(n),
                subject.name().into(),
                format!("{:.2}", r.mpps()),
                against.map_or_else(|| "–".into(), |f| f.subject.name().to_string()),
                against.map_or_else(|| "–".into(), |f| format!("{:.2}×", r.mpps() / f.mpps())),
                against.map_or_else(
                    || "–".into(),
                    |f| format!("{:+.0}", 1e3 / r.mpps() - 1e3 / f.mpps()),
                ),
                if subject == Subject::Floor {
                    "–".into()
                } else {
                    format!("{:.2}×", r.mpps() / floor.mpps())
                },
                format!("{:.2} %", r.loss_pct()),
            ]);
        }
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
            "dropped by stickylb",
            "received at sink",
            "bytes per frame at sink",
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
            opt(r.dropped),
            r.received.to_string(),
            format!("{:.0}", r.bytes_per_frame()),
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
            "dropped_by_stickylb": r.dropped,
            "received_at_sink": r.received,
            "bytes_per_frame_at_sink": r.bytes_per_frame(),
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
        caption: "Mpps received at the sink, stickylb in each mode and the two floors".into(),
    }];

    let mut headlines = Vec::new();
    if let Some(&n) = k.clients.last() {
        let (s, f) = (
            get(Subject::Stickylb(ForwardingMode::Dsr), n)?,
            get(Subject::Floor, n)?,
        );
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
        let e = get(Subject::FloorEncap, n)?;
        let (i, g) = (
            get(Subject::Stickylb(ForwardingMode::Ipip), n)?,
            get(Subject::Stickylb(ForwardingMode::Gue), n)?,
        );
        headlines.push(format!(
            "Live veth, tunnel modes ({} clients): stickylb ipip {:.2} Mpps = {:.2}× floor-encap \
             ({:.2} Mpps), gue {:.2} Mpps = {:.2}×; against DSR {:.2}× and {:.2}×",
            clients_label(n),
            i.mpps(),
            i.mpps() / e.mpps(),
            e.mpps(),
            g.mpps(),
            g.mpps() / e.mpps(),
            i.mpps() / s.mpps(),
            g.mpps() / s.mpps(),
        ));
    }

    let mut tables = vec![summary, detail];
    let scaling_json = match &scaling {
        None => json!({ "skipped": "fewer than 2 CPUs" }),
        Some(sc) => {
            let (table, json, headline) = scaling_report(sc)?;
            tables.push(table);
            headlines.push(headline);
            json
        }
    };

    let method = format!(
        "Two network namespaces joined by one veth pair, g0 (generator side) and l0 (load \
         balancer side), IPv6 off so that nothing else crosses the wire. The program under test \
         is attached to l0 in driver mode: stickylb's real program loaded through `Dataplane` \
         (no pins, affinity capacity {cap}) with one UDP VIP and one alive backend on g0's side \
         (with a MAC of its own, not g0's: the program drops a frame it would send back to the MAC \
         it came from), its Maglev table built with `lb_common::maglev`; or the floor forwarder \
         (tests/bench-ebpf's `floor-fwd`: parse Ethernet + IPv4, swap MACs). All answer with XDP_TX, \
         which sends a frame back out of the interface it came in on, so the forwarded frames \
         return to g0: the backend necessarily sits on l0's peer, and there a sink XDP program \
         (tests/bench-ebpf's `sink`, driver mode) counts every frame in a per-CPU array and drops it. It \
         is also the XDP program the peer of an XDP_TX-ing veth needs in driver mode.\n\n\
         **Forwarding modes.** stickylb runs once per mode on the same wire: DSR as above; \
         `ipip` and `gue` with the VIP switched to that mode and `SLB_TUNNEL` written (outer \
         source {lb_addr}, l0's address; TTL {ttl}; GUE port {gue}). Their next hop comes from \
         the kernel's FIB (`bpf_fib_lookup`): l0 has {lb_addr}/24 and \
         `net.ipv4.conf.l0.forwarding=1`, the backend's subnet {net} is routed via {gw} (g0's \
         address) with a permanent neighbour entry holding g0's MAC, so the lookup answers with \
         l0 itself (XDP_TX) and the sink's MAC. They are compared with the encapsulating floor \
         (tests/bench-ebpf's `floor-encap`: parse Ethernet + IPv4, `bpf_xdp_adjust_head`, write \
         an outer IPv4 header with its checksum, swap MACs, XDP_TX; no FIB lookup), DSR with the \
         floor forwarder. That the frames took the path measured is checked on every run: the \
         sink's byte count is exactly {FRAME_LEN} bytes per frame (+20 for IP-in-IP and \
         floor-encap, +28 for GUE), stickylb's VIP counters show frames forwarded and none \
         dropped (no neighbour, no route, too big, or any other reason) nor passed to the stack, \
         and at least half of the generated frames reach the sink (on this wire none is lost when \
         it works); before each tunnel \
         run one frame is also run through the program from l0 (BPF_PROG_TEST_RUN with l0 as \
         ingress, in the LB's namespace) and its output checked field by field (XDP_TX, the \
         FIB's MACs, outer protocol 4 or UDP to the GUE port, outer source and destination, \
         the client's packet unchanged behind the outer header).\n\n\
         Frames come from BPF_PROG_TEST_RUN in live-frames mode (aya \
         `TestRunAttrs::xdp_live_frames({BATCH})`, ingress interface g0): the kernel runs the \
         generator program (tests/bench-ebpf's `gen`) on each copy of a 64-byte UDP frame to the VIP and \
         really transmits it when it returns XDP_TX, out of g0 to l0. The generator writes the \
         whole Ethernet header (a recycled page holds what the forwarder under test left, and an \
         encapsulating forwarder writes over the first 14 bytes) and a source address from a per-CPU counter modulo the number of clients \
         (1k / 100k{big} addresses from 100.64.0.0), fixing the IPv4 checksum. Each case first \
         sends every client at least once (warm-up) and 300k more frames (to size the timed \
         run), then one live-frames call of about {secs} s from a thread pinned to one CPU. \"Generated\" is the \
         call's frame count (checked against the generator's own counter), \"received\" the \
         sink's count, Mpps = received / wall time of the call, loss = generated − received.\n\n\
         On veth all of this runs in one CPU's softirq context: the generator, the program under \
         test and the sink share the CPU, so the rate is that of the three programs and two veth \
         hops together, and the difference between stickylb and its reference is the load \
         balancer's own extra cost (in the tunnel modes, the FIB lookup, the pick and the \
         affinity table; both write the same outer header, though floor-encap's frames are \
         always 20 bytes longer and GUE's 28). The wall time includes the kernel installing and removing \
         the XDP dispatcher around the call (two RCU grace periods, a few tens of ms, the same \
         for every forwarder), so the rates are slightly conservative.\n\n\
         **Scaling with cores** (its own table; skipped on a machine with one CPU). A second pair \
         of namespaces and veth pair, built the same way but with 2 tx and 2 rx queues on each \
         end. veth's XDP transmit puts a frame on the peer's rx queue numbered by the sending CPU \
         modulo the queue count and schedules that queue's NAPI on the sending CPU, so a frame \
         generated on CPU {c0} or {c1} is forwarded by the program on l0 and counted by the sink \
         on that same CPU, on a queue of its own. The floor forwarder, then stickylb DSR, with \
         {sc_clients} clients (after the same warm-up and a sizing run on one core): one \
         live-frames call from one thread pinned to CPU {c0}, then the same from CPU {c1} (1 core \
         = the mean of the two rates, so that a CPU busier with other work weighs on both sides), \
         then two threads pinned to CPUs {c0} and {c1}, released together by a barrier, each with \
         one call of as many frames (sized to last about {sc_secs} s on one core) and half of the \
         clients (disjoint halves, as RSS keeps a client on one CPU). 2 cores = all frames \
         received / the time from the first call's start to the last one's end. The run is \
         checked as above and also by the sink's per-CPU counters: each of the two CPUs must have \
         received at least {share:.0} % of the frames, or the run is an error, not a figure. \
         Each CPU runs the generator, the program under test and the sink, so the ratio is that \
         of the whole path on each core, not of the load balancer alone. The wall-clock rate also \
         counts how much of each CPU the scheduler gave the threads: on a machine whose cores \
         other work shares (see the load average), a lone thread on one CPU may have it nearly to \
         itself while two threads each share theirs, which pulls the ratio toward 1×. The on-CPU \
         rate leaves that out: it is each thread's frames over the kernel's own clock of its call \
         (BPF_PROG_TEST_RUN's duration, which stops while the call yields its CPU and includes \
         the forwarding and the sink, run in the softirq the call raises), summed over the \
         threads; its ratio shows whether the path itself scales (no shared state slowing the \
         two CPUs down).",
        lb_addr = LB_ADDR,
        gw = GEN_ADDR,
        net = BACKEND_NET,
        ttl = DEFAULT_TUNNEL_TTL,
        gue = DEFAULT_GUE_PORT,
        cap = k.capacity,
        big = if k.clients.contains(&1_000_000) {
            " / 1M"
        } else {
            ""
        },
        secs = k.secs,
        c0 = SCALING_CPUS[0],
        c1 = SCALING_CPUS[1],
        sc_clients = SCALING_CLIENTS,
        sc_secs = SCALING_SECS,
        share = MIN_CPU_SHARE * 100.0,
    );

    Ok(Section {
        title: "Live forwarding rate on veth".into(),
        method,
        tables,
        plots,
        json: json!({
            "seconds_per_run": k.secs,
            "batch": BATCH,
            "frame_len": FRAME_LEN,
            "affinity_capacity": k.capacity,
            "tunnel": {
                "source": LB_ADDR.to_string(),
                "ttl": DEFAULT_TUNNEL_TTL,
                "gue_port": DEFAULT_GUE_PORT,
                "route": format!("{BACKEND_NET} via {GEN_ADDR} dev l0"),
            },
            "runs": json_runs,
            "scaling": scaling_json,
        }),
        headlines,
    })
}
