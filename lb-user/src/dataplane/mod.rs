//! The loaded XDP program and typed handles on its maps.
//!
//! - this file: the errors, the options, and the typed reads and writes of
//!   the maps;
//! - `load`: loading the object (adopting pinned maps) and running it on
//!   test frames;
//! - `attach`: attaching to an interface, directly or through a pinned link;
//! - `shape`: whether a pinned map is what this build would create;
//! - `sys`: the few bpf(2) commands aya 0.14 does not offer;
//! - `ring`: the ring pool, memory-mapped, and its index arithmetic.

mod attach;
mod load;
mod ring;
mod shape;
mod sys;
mod veth;
mod vip_index;

use std::path::PathBuf;

use aya::{
    maps::{Array, HashMap, MapData, MapError, PerCpuArray, RingBuf},
    programs::{ProgramError, links::LinkError},
};
use lb_common::{
    AffinityKey, AffinityValue, BackendInfo, BackendStats, OwnMac, PROGRAM_NAME, RING_POOL_SIZE,
    SyncSettings, TunnelSettings, VipInfo, VipKey, VipStats, global_counter, map_names,
};
use thiserror::Error;

use ring::RingMem;
pub use shape::pinned_shape;
pub use veth::{XdpOnLink, xdp_on_link};

#[derive(Debug, Error)]
pub enum DataplaneError {
    #[error("cannot load the stickylb XDP object (are you root, with BPF enabled?)")]
    Load(#[source] Box<aya::EbpfError>),
    #[error(
        "the XDP object has no map named {0}; it was built from other sources than this daemon"
    )]
    MissingMap(&'static str),
    #[error(
        "the map pinned at {path} is not what this stickylb creates ({detail}): it comes from \
         another version or configuration. Start with --fresh to replace the pinned state \
         (every client is re-pinned){hint}"
    )]
    PinnedShape {
        path: PathBuf,
        detail: String,
        hint: &'static str,
    },
    #[error("cannot read the map pinned at {path}")]
    PinnedInfo {
        path: PathBuf,
        #[source]
        source: Box<MapError>,
    },
    #[error("ring slots {base}..{base}+{len} are outside the ring pool of {RING_POOL_SIZE}")]
    RingRange { base: u32, len: u32 },
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
    #[error("cannot use the pinned XDP link {path}; start with --fresh to replace it")]
    PinnedLink {
        path: PathBuf,
        #[source]
        source: Box<LinkError>,
    },
    #[error("cannot pin the XDP link at {path}")]
    PinLink {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("cannot create the pin folder {path} (is bpffs mounted on /sys/fs/bpf?)")]
    PinDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the reader of {} was taken already (one per loaded program)",
        map_names::SYNC_EVENTS
    )]
    SyncEventsTaken,
    #[error("BPF_PROG_TEST_RUN failed")]
    TestRun(#[source] Box<ProgramError>),
}

type Result<T, E = DataplaneError> = std::result::Result<T, E>;

/// How to load the program.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Entries of the affinity table (clients × VIPs remembered).
    pub affinity_capacity: u32,
    /// Folder on a bpffs: each map is adopted from `<dir>/<map name>` if
    /// pinned there, else created and pinned there. `None`: private maps.
    pub pin_dir: Option<PathBuf>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            affinity_capacity: lb_common::DEFAULT_AFFINITY_CAPACITY,
            pin_dir: None,
        }
    }
}

/// Name of the pinned XDP link inside the pin folder.
pub const LINK_PIN_NAME: &str = "link";

/// How the program ended up attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attached {
    /// A new attachment in this mode.
    New(AttachMode),
    /// A pinned link from an earlier run now runs this program (the old one
    /// was replaced atomically: no frame went unprocessed).
    Adopted,
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
    ebpf: aya::Ebpf,
    vips: HashMap<MapData, VipKey, VipInfo>,
    vip_index: vip_index::VipIndex,
    backends: Array<MapData, BackendInfo>,
    ring: Array<MapData, u32>,
    /// The ring pool mapped into our memory (None if the kernel refused:
    /// then slots go through the map syscalls).
    ring_mem: Option<RingMem>,
    affinity: HashMap<MapData, AffinityKey, AffinityValue>,
    vip_stats: PerCpuArray<MapData, VipStats>,
    backend_stats: PerCpuArray<MapData, BackendStats>,
    global_stats: PerCpuArray<MapData, u64>,
    own_mac: Array<MapData, OwnMac>,
    sync: Array<MapData, SyncSettings>,
    tunnel: Array<MapData, TunnelSettings>,
    /// The sync ring's reader until `sync_events` hands it out.
    sync_events: Option<RingBuf<MapData>>,
}

fn map_err(map: &'static str, op: &'static str) -> impl FnOnce(MapError) -> DataplaneError {
    move |source| DataplaneError::Map {
        map,
        op,
        source: Box::new(source),
    }
}

/// A failed batch lookup of the affinity map, named as its syscall.
fn affinity_batch_error(e: std::io::Error) -> DataplaneError {
    DataplaneError::Map {
        map: map_names::AFFINITY,
        op: "batch lookup",
        source: Box::new(MapError::SyscallError(aya::sys::SyscallError {
            call: "bpf_map_lookup_batch",
            io_error: e,
        })),
    }
}

/// A ring slot the mapped memory does not have, reported as the map would.
fn ring_out_of_bounds(op: &'static str, index: u32) -> DataplaneError {
    DataplaneError::Map {
        map: map_names::RING,
        op,
        source: Box::new(MapError::OutOfBounds {
            index,
            max_entries: RING_POOL_SIZE,
        }),
    }
}

/// Whether a map operation failed only because the key is not there. A
/// lookup says so as `KeyNotFound`; aya hands a failed delete back as the
/// syscall's ENOENT.
fn gone(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound => true,
        MapError::SyscallError(s) => s.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

fn all_vips(vips: &HashMap<MapData, VipKey, VipInfo>) -> Result<Vec<(VipKey, VipInfo)>> {
    vips.iter()
        .collect::<std::result::Result<_, _>>()
        .map_err(map_err(map_names::VIPS, "iterate"))
}

impl Dataplane {
    /// Every VIP in the map.
    pub fn vips(&self) -> Result<Vec<(VipKey, VipInfo)>> {
        all_vips(&self.vips)
    }

    /// The `SLB_VIP_INDEX` slot that holds `key`, if it has one.
    pub fn vip_index_slot(&self, key: &VipKey) -> Result<Option<u32>> {
        self.vip_index.slot_of(key)
    }

    /// Makes `SLB_VIP_INDEX` agree with `SLB_VIPS`, clearing what another
    /// run left there (a removed VIP, older info, a rewrite cut short).
    /// The daemon calls it, holding the pin folder's lock, on maps it
    /// adopts and before the program can see a frame; a tool that only
    /// reads pinned maps does not.
    pub fn reconcile_vip_index(&mut self) -> Result<()> {
        let vips = all_vips(&self.vips)?;
        self.vip_index.reconcile(&vips)
    }

    /// Empties `SLB_VIP_INDEX` and keeps it empty: every VIP is then found
    /// in `SLB_VIPS`, as before the index existed. For measuring what the
    /// index saves (the bench's rows without it); the daemon never calls it.
    pub fn disable_vip_index(&mut self) -> Result<()> {
        self.vip_index.disable()
    }

    /// Every backend id marked in use, with its entry.
    pub fn backends_in_use(&self) -> Result<Vec<(u32, BackendInfo)>> {
        let mut out = Vec::new();
        for (id, info) in self.backends.iter().enumerate() {
            let info = info.map_err(map_err(map_names::BACKENDS, "iterate"))?;
            if info.flags & lb_common::backend_flags::IN_USE != 0 {
                out.push((id as u32, info));
            }
        }
        Ok(out)
    }

    /// `len` slots of the ring from `base`.
    pub fn read_ring(&self, base: u32, len: u32) -> Result<Vec<u32>> {
        ring::span(base, len)?
            .map(|i| match &self.ring_mem {
                Some(mem) => mem.get(i).ok_or_else(|| ring_out_of_bounds("get", i)),
                None => self
                    .ring
                    .get(&i, 0)
                    .map_err(map_err(map_names::RING, "get")),
            })
            .collect()
    }

    /// Writes `(slot, backend id)` pairs into the table starting at `base`.
    pub fn write_ring(
        &mut self,
        base: u32,
        slots: impl IntoIterator<Item = (u32, u32)>,
    ) -> Result<usize> {
        let mut n = 0;
        for (slot, value) in slots {
            let index = ring::index(base, slot)?;
            match &self.ring_mem {
                Some(mem) => mem
                    .set(index, value)
                    .ok_or_else(|| ring_out_of_bounds("set", index))?,
                None => self
                    .ring
                    .set(index, value, 0)
                    .map_err(map_err(map_names::RING, "set"))?,
            }
            n += 1;
        }
        Ok(n)
    }

    /// Deletes the affinity entries `doomed` selects; how many.
    pub fn purge_affinity(
        &mut self,
        doomed: impl Fn(&AffinityKey, &AffinityValue) -> bool,
    ) -> Result<usize> {
        let keys: Vec<AffinityKey> = self
            .affinity_entries()?
            .into_iter()
            .filter(|(k, v)| doomed(k, v))
            .map(|(k, _)| k)
            .collect();
        for k in &keys {
            match self.affinity.remove(k) {
                Ok(()) => {}
                Err(e) if gone(&e) => {}
                Err(e) => return Err(map_err(map_names::AFFINITY, "remove")(e)),
            }
        }
        Ok(keys.len())
    }

    /// Adds or changes a VIP: its index slots made odd (in doubt), then
    /// `SLB_VIPS`, then the index, so that no even slot ever holds info the
    /// hash does not, whichever step fails.
    pub fn set_vip(&mut self, key: VipKey, info: VipInfo) -> Result<()> {
        self.vip_index.doubt_key(&key)?;
        self.vips
            .insert(key, info, 0)
            .map_err(map_err(map_names::VIPS, "insert"))?;
        self.vip_index.place(key, info)
    }

    /// Removes a VIP's entry; one that is gone already is no error, so a
    /// removal cut short can be retried. It leaves the index first, so that
    /// no index slot outlives the VIP.
    pub fn remove_vip(&mut self, key: &VipKey) -> Result<()> {
        self.vip_index.remove(key)?;
        match self.vips.remove(key) {
            Ok(()) => Ok(()),
            Err(e) if gone(&e) => Ok(()),
            Err(e) => Err(map_err(map_names::VIPS, "remove")(e)),
        }
    }

    pub fn set_backend(&mut self, id: u32, info: BackendInfo) -> Result<()> {
        self.backends
            .set(id, info, 0)
            .map_err(map_err(map_names::BACKENDS, "set"))
    }

    /// Tells the program the MAC of the interface it runs on: the source MAC
    /// of the frames it forwards, and the only destination MAC it forwards
    /// (frames to other hosts are passed, `pass_other_host`); `None` (or all
    /// zero): forwarded frames keep the destination MAC they arrived with as
    /// their source, and any destination is forwarded.
    pub fn set_own_mac(&mut self, mac: Option<[u8; 6]>) -> Result<()> {
        self.write_own_mac(OwnMac::new(mac.unwrap_or_default()))
    }

    /// As `set_own_mac`, but frames are forwarded whatever their destination
    /// MAC: for BPF_PROG_TEST_RUN's `repeat`, whose later iterations see the
    /// program's own output, addressed to the backend.
    pub fn set_own_mac_any_destination(&mut self, mac: [u8; 6]) -> Result<()> {
        self.write_own_mac(OwnMac::any_destination(mac))
    }

    fn write_own_mac(&mut self, value: OwnMac) -> Result<()> {
        self.own_mac
            .set(0, value, 0)
            .map_err(map_err(map_names::OWN_MAC, "set"))
    }

    /// Tells the program how to build the tunnel modes' outer header (all
    /// zero: it cannot, and drops a tunnel VIP's frames as `drop_no_route`).
    pub fn set_tunnel(&mut self, settings: TunnelSettings) -> Result<()> {
        self.tunnel
            .set(0, settings, 0)
            .map_err(map_err(map_names::TUNNEL, "set"))
    }

    /// What `set_tunnel` wrote (all zero on a fresh load).
    pub fn tunnel(&self) -> Result<TunnelSettings> {
        self.tunnel
            .get(&0, 0)
            .map_err(map_err(map_names::TUNNEL, "get"))
    }

    /// The MAC `set_own_mac` wrote, if any.
    pub fn own_mac(&self) -> Result<Option<[u8; 6]>> {
        self.own_mac
            .get(&0, 0)
            .map(|m| m.get())
            .map_err(map_err(map_names::OWN_MAC, "get"))
    }

    pub fn backend(&self, id: u32) -> Result<BackendInfo> {
        self.backends
            .get(&id, 0)
            .map_err(map_err(map_names::BACKENDS, "get"))
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
    /// Read in batches of thousands per syscall (BPF_MAP_LOOKUP_BATCH) where
    /// the kernel has it: one at a time, a table of a million entries takes
    /// seconds, during which the daemon (single-threaded) would not react to
    /// health changes.
    pub fn affinity_entries(&self) -> Result<Vec<(AffinityKey, AffinityValue)>> {
        let mut out = Vec::new();
        affinity_batches(&self.affinity, |keys, values| {
            out.extend(keys.iter().copied().zip(values.iter().copied()));
            std::ops::ControlFlow::Continue(())
        })?;
        Ok(out)
    }

    /// The same, with a lookup per entry (kernels without batch lookups).
    pub fn affinity_entries_one_by_one(&self) -> Result<Vec<(AffinityKey, AffinityValue)>> {
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
}

/// Handles of its own on the affinity and VIP maps, for reading them on
/// another thread than the one that owns the `Dataplane` (a walk of
/// millions of entries must not hold up the daemon's main loop).
pub struct TableReader {
    affinity: HashMap<MapData, AffinityKey, AffinityValue>,
    vips: HashMap<MapData, VipKey, VipInfo>,
}

/// A second handle on the map behind `map`: its fd duplicated.
fn second_handle<K: aya::Pod, V: aya::Pod>(
    map: &HashMap<MapData, K, V>,
    name: &'static str,
) -> Result<HashMap<MapData, K, V>> {
    use aya::maps::IterableMap as _;
    use std::os::fd::AsFd as _;
    let fd = map.map().fd().as_fd().try_clone_to_owned().map_err(|e| {
        map_err(name, "duplicate fd")(MapError::SyscallError(aya::sys::SyscallError {
            call: "fcntl(F_DUPFD_CLOEXEC)",
            io_error: e,
        }))
    })?;
    let data = MapData::from_fd(fd).map_err(map_err(name, "open"))?;
    let typed = aya::maps::Map::from_map_data(data).map_err(map_err(name, "open"))?;
    HashMap::try_from(typed).map_err(|e| DataplaneError::MapType {
        name,
        source: Box::new(e),
    })
}

impl Dataplane {
    /// A reader of the affinity and VIP maps that can move to another thread.
    pub fn table_reader(&self) -> Result<TableReader> {
        Ok(TableReader {
            affinity: second_handle(&self.affinity, map_names::AFFINITY)?,
            vips: second_handle(&self.vips, map_names::VIPS)?,
        })
    }
}

impl TableReader {
    /// Every VIP in the map.
    pub fn vips(&self) -> Result<Vec<(VipKey, VipInfo)>> {
        all_vips(&self.vips)
    }

    /// Hands every affinity entry to `visit`, a batch at a time (one
    /// BPF_MAP_LOOKUP_BATCH call each where the kernel has it), until
    /// `visit` breaks. The table changes while it is read: an entry
    /// inserted or removed meanwhile may or may not be seen.
    pub fn affinity_batches(
        &self,
        visit: impl FnMut(&[AffinityKey], &[AffinityValue]) -> std::ops::ControlFlow<()>,
    ) -> Result<()> {
        affinity_batches(&self.affinity, visit)
    }
}

/// `TableReader::affinity_batches` on `affinity`: the one walk of the
/// affinity table, for both handles on it.
fn affinity_batches(
    affinity: &HashMap<MapData, AffinityKey, AffinityValue>,
    mut visit: impl FnMut(&[AffinityKey], &[AffinityValue]) -> std::ops::ControlFlow<()>,
) -> Result<()> {
    use aya::maps::IterableMap as _;
    use std::os::fd::AsFd as _;
    // Key and value sizes are those of the types: aya checked them when
    // it typed the map, and a pinned map is shape-checked before it is
    // adopted.
    match sys::lookup_batch_each(affinity.map().fd().as_fd(), &mut visit) {
        Ok(()) => Ok(()),
        Err(e) if sys::batch_unsupported(&e) => affinity_one_by_one(affinity, visit),
        Err(e) => Err(affinity_batch_error(e)),
    }
}

/// The same with a lookup per entry (kernels without batch lookups),
/// handed on in batches all the same.
fn affinity_one_by_one(
    affinity: &HashMap<MapData, AffinityKey, AffinityValue>,
    mut visit: impl FnMut(&[AffinityKey], &[AffinityValue]) -> std::ops::ControlFlow<()>,
) -> Result<()> {
    const BATCH: usize = 4096;
    let (mut keys, mut values) = (Vec::with_capacity(BATCH), Vec::with_capacity(BATCH));
    for entry in affinity.iter() {
        let (k, v) = entry.map_err(map_err(map_names::AFFINITY, "iterate"))?;
        keys.push(k);
        values.push(v);
        if keys.len() == BATCH {
            if visit(&keys, &values).is_break() {
                return Ok(());
            }
            keys.clear();
            values.clear();
        }
    }
    let _ = visit(&keys, &values);
    Ok(())
}

/// The reader of `SLB_SYNC_EVENTS`. `Send`. The program submits its events
/// without waking anyone (a wakeup costs the forwarding CPU several µs), so
/// the daemon drains on a timer: until `drain` returns less than asked.
pub struct SyncEvents {
    ring: RingBuf<MapData>,
}

const _: () = {
    const fn send<T: Send>() {}
    send::<SyncEvents>();
};

impl std::os::fd::AsRawFd for SyncEvents {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.ring.as_raw_fd()
    }
}

impl SyncEvents {
    /// Moves up to `max` waiting events into `out`; how many it moved. A
    /// record of another size than `SyncEvent` (none is written today) is
    /// skipped.
    pub fn drain(&mut self, out: &mut Vec<lb_common::SyncEvent>, max: usize) -> usize {
        let mut n = 0;
        while n < max {
            let Some(item) = self.ring.next() else {
                break;
            };
            if let Ok(ev) = bytemuck::try_pod_read_unaligned::<lb_common::SyncEvent>(&item) {
                out.push(ev);
                n += 1;
            }
        }
        n
    }
}

impl Dataplane {
    /// Takes the ring buffer's reader (once per loaded program; a second
    /// call is an error).
    pub fn sync_events(&mut self) -> Result<SyncEvents> {
        let ring = self
            .sync_events
            .take()
            .ok_or(DataplaneError::SyncEventsTaken)?;
        Ok(SyncEvents { ring })
    }

    /// Turns the program's sync events on or off; `refresh` is how often a
    /// busy client's pin is announced again so that peers' copies stay live
    /// (in whole seconds, rounded up, at least one).
    pub fn set_sync(&mut self, enabled: bool, refresh: std::time::Duration) -> Result<()> {
        self.sync
            .set(0, sync_settings(enabled, refresh), 0)
            .map_err(map_err(map_names::SYNC, "set"))
    }

    /// What `set_sync` wrote (all zero: off, as a fresh load is).
    pub fn sync_settings(&self) -> Result<SyncSettings> {
        self.sync
            .get(&0, 0)
            .map_err(map_err(map_names::SYNC, "get"))
    }
}

/// The `SLB_SYNC` entry for `set_sync`.
fn sync_settings(enabled: bool, refresh: std::time::Duration) -> SyncSettings {
    let refresh_s = refresh
        .as_millis()
        .div_ceil(1000)
        .clamp(1, u128::from(u32::MAX)) as u32;
    SyncSettings {
        enabled: u32::from(enabled),
        refresh_s,
    }
}

#[cfg(test)]
mod sync_tests {
    use std::time::Duration;

    use super::sync_settings;

    #[test]
    fn refresh_is_whole_seconds_rounded_up_and_never_zero() {
        let s = sync_settings(true, Duration::from_secs(30));
        assert_eq!((s.enabled, s.refresh_s), (1, 30));
        assert_eq!(
            sync_settings(true, Duration::from_millis(1500)).refresh_s,
            2
        );
        assert_eq!(sync_settings(false, Duration::ZERO).refresh_s, 1);
        assert_eq!(sync_settings(false, Duration::ZERO).enabled, 0);
        assert_eq!(
            sync_settings(true, Duration::from_secs(u64::MAX)).refresh_s,
            u32::MAX
        );
    }
}
