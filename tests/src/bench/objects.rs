//! Reference XDP programs for `cargo xtask bench`, built from tests/bench-ebpf
//! by this package's build.rs the way lb-user builds the load balancer, and a
//! small handle to load, run and attach them. Names of their programs and
//! maps: `bench_ebpf`.

use std::time::Duration;

use aya::{
    Ebpf, EbpfError,
    maps::{Array, MapData, MapError, PerCpuArray},
    programs::{ProgramError, TestRun as _, TestRunAttrs, TestRunOptions, Xdp, XdpMode},
};
use bench_ebpf::{GenConfig, map_names, program_names, sink_counter};
use lb_user::dataplane::AttachMode;
use thiserror::Error;

/// Returns `XDP_PASS`: the cost of running any XDP program.
pub static FLOOR_PASS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/floor-pass"));
/// Parses Ethernet + IPv4, swaps the MACs, `XDP_TX`: the floor forwarder.
pub static FLOOR_FWD: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/floor-fwd"));
/// Parses Ethernet + IPv4, adds an outer IPv4 header, swaps the MACs,
/// `XDP_TX`: the floor encapsulating forwarder.
pub static FLOOR_ENCAP: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/floor-encap"));
/// Counts frames per CPU and drops them (receiving end of the live test).
pub static SINK: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sink"));
/// Timing harness: restores the frame, writes a client, tail-calls the
/// program under test (see `super::wrapped`).
pub static WRAP: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/wrap"));
/// Live-frames traffic generator (rewrites MACs and the client address).
pub static GEN: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gen"));

/// One of the reference programs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reference {
    FloorPass,
    FloorFwd,
    FloorEncap,
    Sink,
    Gen,
}

impl Reference {
    pub fn object(self) -> &'static [u8] {
        match self {
            Self::FloorPass => FLOOR_PASS,
            Self::FloorFwd => FLOOR_FWD,
            Self::FloorEncap => FLOOR_ENCAP,
            Self::Sink => SINK,
            Self::Gen => GEN,
        }
    }

    pub fn program_name(self) -> &'static str {
        match self {
            Self::FloorPass => program_names::FLOOR_PASS,
            Self::FloorFwd => program_names::FLOOR_FWD,
            Self::FloorEncap => program_names::FLOOR_ENCAP,
            Self::Sink => program_names::SINK,
            Self::Gen => program_names::GEN,
        }
    }
}

#[derive(Debug, Error)]
pub enum BenchObjectError {
    #[error("cannot load the benchmark program {0} (are you root, with BPF enabled?)")]
    Load(&'static str, #[source] Box<EbpfError>),
    #[error("the benchmark object has no XDP program {0}")]
    MissingProgram(&'static str),
    #[error("program {name}: {op} failed")]
    Program {
        name: &'static str,
        op: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("program {program} has no map {map}")]
    MissingMap {
        program: &'static str,
        map: &'static str,
    },
    #[error("map {map}: {op} failed")]
    Map {
        map: &'static str,
        op: &'static str,
        #[source]
        source: Box<MapError>,
    },
}

type Result<T, E = BenchObjectError> = std::result::Result<T, E>;

/// A reference program loaded into the kernel. Attachments last as long as
/// the handle.
pub struct RefProgram {
    ebpf: Ebpf,
    which: Reference,
}

impl RefProgram {
    pub fn load(which: Reference) -> Result<Self> {
        let name = which.program_name();
        let mut ebpf =
            Ebpf::load(which.object()).map_err(|e| BenchObjectError::Load(name, Box::new(e)))?;
        let prog: &mut Xdp = ebpf
            .program_mut(name)
            .ok_or(BenchObjectError::MissingProgram(name))?
            .try_into()
            .map_err(Self::prog_err(name, "load"))?;
        prog.load().map_err(Self::prog_err(name, "load"))?;
        Ok(Self { ebpf, which })
    }

    fn prog_err(
        name: &'static str,
        op: &'static str,
    ) -> impl FnOnce(ProgramError) -> BenchObjectError {
        move |e| BenchObjectError::Program {
            name,
            op,
            source: Box::new(e),
        }
    }

    fn program(&mut self) -> &mut Xdp {
        let name = self.which.program_name();
        // Both checked in load().
        self.ebpf
            .program_mut(name)
            .and_then(|p| <&mut Xdp>::try_from(p).ok())
            .expect("program checked at load")
    }

    /// The loaded program's file descriptor (for a program array: the
    /// timing wrapper tail-calls it).
    pub fn fd(&self) -> Result<&aya::programs::ProgramFd> {
        let name = self.which.program_name();
        let prog: &Xdp = self
            .ebpf
            .program(name)
            .ok_or(BenchObjectError::MissingProgram(name))?
            .try_into()
            .map_err(Self::prog_err(name, "fd"))?;
        prog.fd().map_err(Self::prog_err(name, "fd"))
    }

    /// Attaches to `iface` of the calling thread's network namespace.
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> Result<()> {
        let mode = match mode {
            AttachMode::Driver => XdpMode::Driver,
            AttachMode::Skb => XdpMode::Skb,
        };
        let name = self.which.program_name();
        self.program()
            .attach(iface, mode)
            .map_err(Self::prog_err(name, "attach"))?;
        Ok(())
    }

    /// Runs the program `repeat` times on `frame` (BPF_PROG_TEST_RUN): the
    /// action of the last run and the mean time per run the kernel measured.
    pub fn test_run_repeat(&mut self, frame: &[u8], repeat: u32) -> Result<(u32, Duration)> {
        let name = self.which.program_name();
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.repeat = repeat;
        let res = self
            .program()
            .test_run(opts)
            .map_err(Self::prog_err(name, "BPF_PROG_TEST_RUN"))?;
        Ok((res.return_value, res.duration))
    }

    /// Runs the program once on `frame` as if received on interface
    /// `ifindex` (of the calling thread's namespace), as
    /// `Dataplane::test_run_from_timed` runs stickylb: the action and the
    /// time of the run the kernel measured.
    pub fn test_run_from(&mut self, frame: &[u8], ifindex: u32) -> Result<(u32, Duration)> {
        let name = self.which.program_name();
        let ctx = xdp_md(frame.len(), ifindex);
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.ctx_in = Some(&ctx);
        let res = self
            .program()
            .test_run(opts)
            .map_err(Self::prog_err(name, "BPF_PROG_TEST_RUN"))?;
        Ok((res.return_value, res.duration))
    }

    /// BPF_PROG_TEST_RUN in live-frames mode: runs the program on `frames`
    /// copies of `frame` as if received on interface `ifindex` (of the
    /// calling thread's namespace), `batch` at a time, and really transmits
    /// what it returns `XDP_TX` for. The kernel's mean time per frame.
    pub fn run_live(
        &mut self,
        frame: &[u8],
        ifindex: u32,
        frames: u32,
        batch: u32,
    ) -> Result<Duration> {
        let name = self.which.program_name();
        let ctx = xdp_md(frame.len(), ifindex);
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.ctx_in = Some(&ctx);
        opts.repeat = frames;
        opts.attrs = TestRunAttrs::new().xdp_live_frames(batch);
        let res = self
            .program()
            .test_run(opts)
            .map_err(Self::prog_err(name, "BPF_PROG_TEST_RUN (live frames)"))?;
        Ok(res.duration)
    }

    fn per_cpu_sum(&self, map: &'static str, index: u32) -> Result<u64> {
        let program = self.which.program_name();
        let m = self
            .ebpf
            .map(map)
            .ok_or(BenchObjectError::MissingMap { program, map })?;
        let arr: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(m).map_err(|e| BenchObjectError::Map {
                map,
                op: "open",
                source: Box::new(e),
            })?;
        let values = arr.get(&index, 0).map_err(|e| BenchObjectError::Map {
            map,
            op: "get",
            source: Box::new(e),
        })?;
        Ok(values.iter().sum())
    }

    /// The sink's counters (`sink_counter::*`), summed over CPUs.
    pub fn sink_counts(&self) -> Result<[u64; sink_counter::COUNT as usize]> {
        let mut out = [0; sink_counter::COUNT as usize];
        for (i, v) in out.iter_mut().enumerate() {
            *v = self.per_cpu_sum(map_names::SINK_COUNT, i as u32)?;
        }
        Ok(out)
    }

    /// Frames the generator has produced, summed over CPUs.
    pub fn gen_count(&self) -> Result<u64> {
        self.per_cpu_sum(map_names::GEN_SEQ, 0)
    }

    /// Sets what the generator writes into every frame.
    pub fn set_gen_config(&mut self, cfg: GenConfig) -> Result<()> {
        let program = self.which.program_name();
        let map = map_names::GEN_CONFIG;
        let m = self
            .ebpf
            .map_mut(map)
            .ok_or(BenchObjectError::MissingMap { program, map })?;
        let mut arr: Array<&mut MapData, GenConfig> =
            Array::try_from(m).map_err(|e| BenchObjectError::Map {
                map,
                op: "open",
                source: Box::new(e),
            })?;
        arr.set(0, cfg, 0).map_err(|e| BenchObjectError::Map {
            map,
            op: "set",
            source: Box::new(e),
        })
    }
}

/// A `struct xdp_md` for `ctx_in`: data, data_end (the frame's length),
/// data_meta, ingress_ifindex, rx_queue_index, egress_ifindex.
fn xdp_md(len: usize, ifindex: u32) -> Vec<u8> {
    let md: [u32; 6] = [0, len as u32, 0, ifindex, 0, 0];
    md.iter().flat_map(|v| v.to_ne_bytes()).collect()
}
