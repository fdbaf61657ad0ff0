//! Loading the object into the kernel, adopting the maps an earlier run
//! pinned, and running the program on test frames.

use aya::{
    EbpfLoader,
    maps::{Array, MapData},
    programs::{TestRun as _, TestRunOptions, Xdp},
};
use lb_common::{PROGRAM_NAME, map_names};

use super::{
    Dataplane, DataplaneError, LoadOptions, Result, ring::RingMem, shape, vip_index::VipIndex,
};
use crate::XDP_OBJECT;

macro_rules! take_map {
    ($ebpf:expr, $name:expr) => {{
        let name: &'static str = $name;
        let map = $ebpf
            .take_map(name)
            .ok_or(DataplaneError::MissingMap(name))?;
        map.try_into().map_err(|e| DataplaneError::MapType {
            name,
            source: Box::new(e),
        })?
    }};
}

impl Dataplane {
    /// Loads the embedded object and the program into the kernel (not
    /// attached to any interface yet).
    pub fn load(opts: &LoadOptions) -> Result<Self> {
        let mut loader = EbpfLoader::new();
        loader.map_max_entries(map_names::AFFINITY, opts.affinity_capacity);
        if let Some(dir) = &opts.pin_dir {
            std::fs::create_dir_all(dir).map_err(|source| DataplaneError::PinDir {
                path: dir.clone(),
                source,
            })?;
            shape::check_pinned(dir, opts.affinity_capacity)?;
            for name in map_names::ALL {
                loader.map_pin_path(name, dir.join(name));
            }
        }
        let mut ebpf = loader
            .load(XDP_OBJECT)
            .map_err(|e| DataplaneError::Load(Box::new(e)))?;
        let prog: &mut Xdp = ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or(DataplaneError::MissingProgram)?
            .try_into()
            .map_err(|e| DataplaneError::Program(Box::new(e)))?;
        prog.load()
            .map_err(|e| DataplaneError::Program(Box::new(e)))?;
        let ring: Array<MapData, u32> = take_map!(ebpf, map_names::RING);
        let ring_mem = RingMem::map(&ring);
        Ok(Self {
            vips: take_map!(ebpf, map_names::VIPS),
            vip_index: VipIndex::new(take_map!(ebpf, map_names::VIP_INDEX)),
            backends: take_map!(ebpf, map_names::BACKENDS),
            ring,
            ring_mem,
            affinity: take_map!(ebpf, map_names::AFFINITY),
            vip_stats: take_map!(ebpf, map_names::VIP_STATS),
            backend_stats: take_map!(ebpf, map_names::BACKEND_STATS),
            global_stats: take_map!(ebpf, map_names::GLOBAL_STATS),
            own_mac: take_map!(ebpf, map_names::OWN_MAC),
            sync: take_map!(ebpf, map_names::SYNC),
            tunnel: take_map!(ebpf, map_names::TUNNEL),
            sync_events: Some(take_map!(ebpf, map_names::SYNC_EVENTS)),
            ebpf,
        })
    }

    pub(super) fn program(&mut self) -> &mut Xdp {
        // Both unwraps were checked in load().
        self.ebpf
            .program_mut(PROGRAM_NAME)
            .and_then(|p| <&mut Xdp>::try_from(p).ok())
            .expect("program checked at load")
    }

    /// The loaded program's file descriptor: what a program array takes (a
    /// benchmark's wrapper tail-calls the program through one).
    pub fn program_fd(&self) -> Result<&aya::programs::ProgramFd> {
        let prog: &Xdp = self
            .ebpf
            .program(PROGRAM_NAME)
            .ok_or(DataplaneError::MissingProgram)?
            .try_into()
            .map_err(|e| DataplaneError::Program(Box::new(e)))?;
        prog.fd().map_err(|e| DataplaneError::Program(Box::new(e)))
    }

    /// The affinity map's file descriptor, e.g. to read the kernel memory
    /// it holds (`memlock` in /proc/self/fdinfo).
    pub fn affinity_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use aya::maps::IterableMap as _;
        use std::os::fd::AsFd as _;
        self.affinity.map().fd().as_fd()
    }

    /// Runs the program once on `frame` (BPF_PROG_TEST_RUN): the action and
    /// the frame as the program left it.
    pub fn test_run(&mut self, frame: &[u8]) -> Result<(u32, Vec<u8>)> {
        let mut out = vec![0u8; frame.len() + 256];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut out);
        let res = self
            .program()
            .test_run(opts)
            .map_err(|e| DataplaneError::TestRun(Box::new(e)))?;
        out.truncate(res.data_size_out as usize);
        Ok((res.return_value, out))
    }

    /// Runs the program once on `frame` as if it had arrived on interface
    /// `ingress_ifindex` (BPF_PROG_TEST_RUN with a `struct xdp_md`): what the
    /// tunnel modes need, since the kernel's FIB lookup starts from the
    /// ingress interface. The interface is looked up in the calling thread's
    /// network namespace, and so is the FIB. The action and the frame as the
    /// program left it.
    pub fn test_run_from(&mut self, frame: &[u8], ingress_ifindex: u32) -> Result<(u32, Vec<u8>)> {
        let ctx = xdp_md(frame.len(), ingress_ifindex);
        // Room for what the program may put in front (the tunnel headers).
        let mut out = vec![0u8; frame.len() + 256];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut out);
        opts.ctx_in = Some(&ctx);
        let res = self
            .program()
            .test_run(opts)
            .map_err(|e| DataplaneError::TestRun(Box::new(e)))?;
        out.truncate(res.data_size_out as usize);
        Ok((res.return_value, out))
    }

    /// Runs the program once on `frame` arriving on `ingress_ifindex`, as
    /// `test_run_from`, without copying the output: the action and the
    /// time of the run as the kernel measured it.
    pub fn test_run_from_timed(
        &mut self,
        frame: &[u8],
        ingress_ifindex: u32,
    ) -> Result<(u32, std::time::Duration)> {
        let ctx = xdp_md(frame.len(), ingress_ifindex);
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.ctx_in = Some(&ctx);
        let res = self
            .program()
            .test_run(opts)
            .map_err(|e| DataplaneError::TestRun(Box::new(e)))?;
        Ok((res.return_value, res.duration))
    }

    /// Runs the program `repeat` times on `frame`; the action and the mean
    /// time per run as the kernel measured it.
    pub fn test_run_repeat(
        &mut self,
        frame: &[u8],
        repeat: u32,
    ) -> Result<(u32, std::time::Duration)> {
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.repeat = repeat;
        let res = self
            .program()
            .test_run(opts)
            .map_err(|e| DataplaneError::TestRun(Box::new(e)))?;
        Ok((res.return_value, res.duration))
    }
}

/// A `struct xdp_md` for BPF_PROG_TEST_RUN's `ctx_in`: `data` 0 and
/// `data_end` the frame's length (as the kernel requires), the ingress
/// interface, receive queue 0, no egress interface.
fn xdp_md(len: usize, ingress_ifindex: u32) -> [u8; 24] {
    let fields = [0, len as u32, 0, ingress_ifindex, 0, 0];
    let mut ctx = [0u8; 24];
    for (chunk, v) in ctx.chunks_exact_mut(4).zip(fields) {
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    ctx
}
