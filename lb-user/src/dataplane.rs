//! The loaded XDP program and typed handles on its maps.

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, MapError, PerCpuArray},
    programs::{ProgramError, TestRun as _, TestRunOptions, Xdp, XdpMode, xdp::XdpLinkId},
};
use lb_common::{
    AffinityKey, AffinityValue, BackendInfo, BackendStats, PROGRAM_NAME, VipInfo, VipKey, VipStats,
    global_counter, map_names,
};
use thiserror::Error;

use crate::XDP_OBJECT;

#[derive(Debug, Error)]
pub enum DataplaneError {
    #[error("cannot load the stickylb XDP object (are you root, with BPF enabled?)")]
    Load(#[source] Box<aya::EbpfError>),
    #[error(
        "the XDP object has no map named {0}; it was built from other sources than this daemon"
    )]
    MissingMap(&'static str),
    #[error("map {name} has an unexpected type or layout")]
    MapType {
        name: &'static str,
        #[source]
        source: Box<MapError>,
    },
    #[error("the XDP object has no program named {PROGRAM_NAME}")]
    MissingProgram,
    #[error("the kernel refused the XDP program")]
    Program(#[source] Box<ProgramError>),
    #[error("cannot attach XDP to {iface} in {mode} mode{hint}")]
    Attach {
        iface: String,
        mode: &'static str,
        hint: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("map {map}: {op} failed")]
    Map {
        map: &'static str,
        op: &'static str,
        #[source]
        source: Box<MapError>,
    },
    #[error("BPF_PROG_TEST_RUN failed")]
    TestRun(#[source] Box<ProgramError>),
}

type Result<T, E = DataplaneError> = std::result::Result<T, E>;

/// How to load the program.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Entries of the affinity table (clients × VIPs remembered).
    pub affinity_capacity: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            affinity_capacity: lb_common::DEFAULT_AFFINITY_CAPACITY,
        }
    }
}

/// How to attach to an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// Native (driver) XDP.
    Driver,
    /// Generic (skb) XDP: works everywhere, slower.
    Skb,
}

impl AttachMode {
    fn name(self) -> &'static str {
        match self {
            Self::Driver => "driver",
            Self::Skb => "skb",
        }
    }
}

/// The XDP program, loaded into the kernel, and its maps.
pub struct Dataplane {
    ebpf: Ebpf,
    vips: HashMap<MapData, VipKey, VipInfo>,
    backends: Array<MapData, BackendInfo>,
    ring: Array<MapData, u32>,
    affinity: HashMap<MapData, AffinityKey, AffinityValue>,
    vip_stats: PerCpuArray<MapData, VipStats>,
    backend_stats: PerCpuArray<MapData, BackendStats>,
    global_stats: PerCpuArray<MapData, u64>,
}

fn map_err(map: &'static str, op: &'static str) -> impl FnOnce(MapError) -> DataplaneError {
    move |source| DataplaneError::Map {
        map,
        op,
        source: Box::new(source),
    }
}

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
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(map_names::AFFINITY, opts.affinity_capacity)
            .load(XDP_OBJECT)
            .map_err(|e| DataplaneError::Load(Box::new(e)))?;
        let prog: &mut Xdp = ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or(DataplaneError::MissingProgram)?
            .try_into()
            .map_err(|e| DataplaneError::Program(Box::new(e)))?;
        prog.load()
            .map_err(|e| DataplaneError::Program(Box::new(e)))?;
        Ok(Self {
            vips: take_map!(ebpf, map_names::VIPS),
            backends: take_map!(ebpf, map_names::BACKENDS),
            ring: take_map!(ebpf, map_names::RING),
            affinity: take_map!(ebpf, map_names::AFFINITY),
            vip_stats: take_map!(ebpf, map_names::VIP_STATS),
            backend_stats: take_map!(ebpf, map_names::BACKEND_STATS),
            global_stats: take_map!(ebpf, map_names::GLOBAL_STATS),
            ebpf,
        })
    }

    fn program(&mut self) -> &mut Xdp {
        // Both unwraps were checked in load().
        self.ebpf
            .program_mut(PROGRAM_NAME)
            .and_then(|p| <&mut Xdp>::try_from(p).ok())
            .expect("program checked at load")
    }

    /// Attaches to `iface`. The attachment lasts as long as `self`.
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> Result<XdpLinkId> {
        let flags = match mode {
            AttachMode::Driver => XdpMode::Driver,
            AttachMode::Skb => XdpMode::Skb,
        };
        self.program()
            .attach(iface, flags)
            .map_err(|source| DataplaneError::Attach {
                iface: iface.to_owned(),
                mode: mode.name(),
                hint: match mode {
                    AttachMode::Driver => "; retry in skb (generic) mode",
                    AttachMode::Skb => "",
                },
                source: Box::new(source),
            })
    }

    pub fn set_vip(&mut self, key: VipKey, info: VipInfo) -> Result<()> {
        self.vips
            .insert(key, info, 0)
            .map_err(map_err(map_names::VIPS, "insert"))
    }

    pub fn remove_vip(&mut self, key: &VipKey) -> Result<()> {
        self.vips
            .remove(key)
            .map_err(map_err(map_names::VIPS, "remove"))
    }

    pub fn set_backend(&mut self, id: u32, info: BackendInfo) -> Result<()> {
        self.backends
            .set(id, info, 0)
            .map_err(map_err(map_names::BACKENDS, "set"))
    }

    pub fn backend(&self, id: u32) -> Result<BackendInfo> {
        self.backends
            .get(&id, 0)
            .map_err(map_err(map_names::BACKENDS, "get"))
    }

    /// Writes `(slot, backend id)` pairs into the table starting at `base`.
    pub fn write_ring(
        &mut self,
        base: u32,
        slots: impl IntoIterator<Item = (u32, u32)>,
    ) -> Result<usize> {
        let mut n = 0;
        for (slot, value) in slots {
            self.ring
                .set(base + slot, value, 0)
                .map_err(map_err(map_names::RING, "set"))?;
            n += 1;
        }
        Ok(n)
    }

    pub fn affinity(&self, key: &AffinityKey) -> Result<Option<AffinityValue>> {
        match self.affinity.get(key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err(map_names::AFFINITY, "get")(e)),
        }
    }

    pub fn set_affinity(&mut self, key: AffinityKey, value: AffinityValue) -> Result<()> {
        self.affinity
            .insert(key, value, 0)
            .map_err(map_err(map_names::AFFINITY, "insert"))
    }

    /// Every affinity entry (a snapshot; the table changes while it is read).
    pub fn affinity_entries(&self) -> Result<Vec<(AffinityKey, AffinityValue)>> {
        self.affinity
            .iter()
            .collect::<std::result::Result<_, _>>()
            .map_err(map_err(map_names::AFFINITY, "iterate"))
    }

    /// Counters of a VIP, summed over CPUs.
    pub fn vip_stats(&self, vip_id: u32) -> Result<VipStats> {
        let per_cpu = self
            .vip_stats
            .get(&vip_id, 0)
            .map_err(map_err(map_names::VIP_STATS, "get"))?;
        let mut sum = VipStats::default();
        per_cpu.iter().for_each(|v| sum.add(v));
        Ok(sum)
    }

    /// Counters of a backend, summed over CPUs.
    pub fn backend_stats(&self, backend_id: u32) -> Result<BackendStats> {
        let per_cpu = self
            .backend_stats
            .get(&backend_id, 0)
            .map_err(map_err(map_names::BACKEND_STATS, "get"))?;
        let mut sum = BackendStats::default();
        per_cpu.iter().for_each(|v| sum.add(v));
        Ok(sum)
    }

    /// Counters of passed frames, by `global_counter` index, summed over CPUs.
    pub fn global_stats(&self) -> Result<[u64; global_counter::COUNT as usize]> {
        let mut out = [0; global_counter::COUNT as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = self
                .global_stats
                .get(&(i as u32), 0)
                .map_err(map_err(map_names::GLOBAL_STATS, "get"))?
                .iter()
                .sum();
        }
        Ok(out)
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
