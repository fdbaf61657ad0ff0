//! The loaded XDP program and typed handles on its maps.

use std::path::{Path, PathBuf};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, MapError, MapInfo, PerCpuArray},
    programs::{
        ProgramError, TestRun as _, TestRunOptions, Xdp, XdpMode,
        links::{FdLink, LinkError, PinnedLink},
        xdp::{XdpLink, XdpLinkId},
    },
};
use lb_common::{
    AffinityKey, AffinityValue, BackendInfo, BackendStats, PROGRAM_NAME, RING_POOL_SIZE, VipInfo,
    VipKey, VipStats, global_counter, map_names,
    map_shapes::{self, MapShape},
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
    ebpf: Ebpf,
    vips: HashMap<MapData, VipKey, VipInfo>,
    backends: Array<MapData, BackendInfo>,
    ring: Array<MapData, u32>,
    /// The ring pool mapped into our memory (None if the kernel refused:
    /// then slots go through the map syscalls).
    ring_mem: Option<RingMem>,
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

/// The bpf(2) syscall with `attr` as its `union bpf_attr` (zero what the
/// command does not use); its non-negative result.
///
/// # Safety
/// Every pointer in `attr` must be valid for what the command reads or
/// writes through it, for the duration of the call.
pub unsafe fn sys_bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> std::io::Result<libc::c_long> {
    // SAFETY: attr is a bpf_attr of the size passed; the caller vouches for
    // the pointers in it.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), size_of_val(attr)) };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// All entries of a hash map of `K` → `V` by BPF_MAP_LOOKUP_BATCH. The
/// caller guarantees the map's key and value sizes are those of `K` and `V`
/// (pinned maps are shape-checked before adoption).
fn lookup_batch<K: bytemuck::Pod, V: bytemuck::Pod>(
    fd: std::os::fd::BorrowedFd<'_>,
) -> std::io::Result<Vec<(K, V)>> {
    use std::os::fd::AsRawFd as _;
    const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
    let mut chunk = 4096usize;
    let mut out = Vec::new();
    // The hash map's batch token is a bucket index (u32); room for more.
    let mut in_batch = [0u64; 1];
    let mut out_batch = [0u64; 1];
    let mut first = true;
    loop {
        let mut keys = vec![K::zeroed(); chunk];
        let mut values = vec![V::zeroed(); chunk];
        // union bpf_attr, batch member: in_batch, out_batch, keys, values
        // (pointers), count and map_fd (u32 each), elem_flags, flags.
        let mut attr = [0u64; 16];
        attr[0] = if first { 0 } else { in_batch.as_ptr() as u64 };
        attr[1] = out_batch.as_mut_ptr() as u64;
        attr[2] = keys.as_mut_ptr() as u64;
        attr[3] = values.as_mut_ptr() as u64;
        attr[4] = chunk as u64 | (u64::from(fd.as_raw_fd() as u32) << 32);
        // SAFETY: the kernel writes at most `count` keys and values into
        // buffers of that many elements of the map's sizes, and one token
        // into out_batch; all outlive the call.
        let err = unsafe { sys_bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) }.err();
        // The kernel writes back how many it copied, also with ENOENT.
        let got = (attr[4] & 0xffff_ffff) as usize;
        match err.as_ref().and_then(std::io::Error::raw_os_error) {
            // A bucket with more entries than fit: retry it with more room.
            Some(libc::ENOSPC) if got == 0 => {
                chunk *= 4;
                continue;
            }
            None | Some(libc::ENOENT) => {}
            _ => return Err(err.expect("an error")),
        }
        out.extend(keys.into_iter().zip(values).take(got.min(chunk)));
        if err.is_some() {
            return Ok(out);
        }
        in_batch = out_batch;
        first = false;
    }
}

/// The shape of the map pinned at `path`, as the kernel reports it.
pub fn pinned_shape(name: &'static str, path: &Path) -> Result<MapShape> {
    let info = MapInfo::from_pin(path).map_err(|e| DataplaneError::PinnedInfo {
        path: path.to_owned(),
        source: Box::new(e),
    })?;
    Ok(MapShape {
        name,
        kind: info.map_type().map_or(u32::MAX, |t| t as u32),
        key_size: info.key_size(),
        value_size: info.value_size(),
        max_entries: Some(info.max_entries()),
        flags: info.map_flags(),
    })
}

/// Adopting a pinned map of another shape would go wrong silently: aya
/// reuses it as it is, so a larger value than ours would be copied past the
/// end of our buffers, another map type behaves differently, and a changed
/// `affinity_capacity` would simply not apply. So every pinned map is
/// compared with what this build creates before anything is loaded.
fn check_pinned_shapes(dir: &Path, affinity_capacity: u32) -> Result<()> {
    for want in map_shapes::ALL {
        let path = dir.join(want.name);
        if !path.exists() {
            continue;
        }
        let have = pinned_shape(want.name, &path)?;
        let want_max = want.max_entries.unwrap_or(affinity_capacity);
        let mut detail = Vec::new();
        let mut hint = "";
        if have.kind != want.kind {
            detail.push(format!("map type {} instead of {}", have.kind, want.kind));
        }
        if have.key_size != want.key_size {
            detail.push(format!(
                "{}-byte keys instead of {}",
                have.key_size, want.key_size
            ));
        }
        if have.value_size != want.value_size {
            detail.push(format!(
                "{}-byte values instead of {}",
                have.value_size, want.value_size
            ));
        }
        if have.max_entries != Some(want_max) {
            detail.push(format!(
                "{} entries instead of {want_max}",
                have.max_entries.unwrap_or(0)
            ));
            if want.max_entries.is_none() {
                hint = ", or set affinity_capacity back to the pinned table's size";
            }
        }
        if have.flags != want.flags {
            detail.push(format!(
                "flags {:#x} instead of {:#x}",
                have.flags, want.flags
            ));
        }
        if !detail.is_empty() {
            return Err(DataplaneError::PinnedShape {
                path,
                detail: detail.join(", "),
                hint,
            });
        }
    }
    Ok(())
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
            check_pinned_shapes(dir, opts.affinity_capacity)?;
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
            backends: take_map!(ebpf, map_names::BACKENDS),
            ring,
            ring_mem,
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

    /// Attaches through a link pinned at `link_pin`, so the program keeps
    /// forwarding when the daemon exits or dies. If a link is already pinned
    /// there (a previous daemon's), this program replaces the old one in it
    /// atomically. `fallback`: mode to try when `mode` is refused.
    pub fn attach_pinned(
        &mut self,
        iface: &str,
        mode: AttachMode,
        fallback: Option<AttachMode>,
        link_pin: &Path,
    ) -> Result<(Attached, Vec<DataplaneError>)> {
        if link_pin.exists() {
            let pinned_err = |e: LinkError| DataplaneError::PinnedLink {
                path: link_pin.to_owned(),
                source: Box::new(e),
            };
            let pinned = PinnedLink::from_pin(link_pin).map_err(pinned_err)?;
            let link = XdpLink::try_from(FdLink::from(pinned)).map_err(pinned_err)?;
            let prog = self.program();
            let id = prog
                .attach_to_link(link)
                .map_err(|e| DataplaneError::Program(Box::new(e)))?;
            // The pin keeps the link; our handle on it may go.
            drop(prog.take_link(id));
            return Ok((Attached::Adopted, Vec::new()));
        }
        let mut refused = Vec::new();
        let (id, used) = match self.attach(iface, mode) {
            Ok(id) => (id, mode),
            Err(e) => match fallback {
                Some(other) => {
                    refused.push(e);
                    (self.attach(iface, other)?, other)
                }
                None => return Err(e),
            },
        };
        let prog = self.program();
        let link = prog
            .take_link(id)
            .map_err(|e| DataplaneError::Program(Box::new(e)))?;
        let pin_err = |e: Box<dyn std::error::Error + Send + Sync>| DataplaneError::PinLink {
            path: link_pin.to_owned(),
            source: e,
        };
        let fd_link = FdLink::try_from(link).map_err(|e| pin_err(Box::new(e)))?;
        fd_link.pin(link_pin).map_err(|e| pin_err(Box::new(e)))?;
        Ok((Attached::New(used), refused))
    }

    /// Detaches the program pinned at `link_pin` (if any) by removing the
    /// pin and closing the last handle on the link.
    pub fn detach_pinned(link_pin: &Path) -> Result<bool> {
        if !link_pin.exists() {
            return Ok(false);
        }
        let pinned = PinnedLink::from_pin(link_pin).map_err(|e| DataplaneError::PinnedLink {
            path: link_pin.to_owned(),
            source: Box::new(e),
        })?;
        let fd_link = pinned.unpin().map_err(|e| DataplaneError::PinLink {
            path: link_pin.to_owned(),
            source: Box::new(e),
        })?;
        drop(fd_link);
        Ok(true)
    }

    /// The interface index the XDP link pinned at `link_pin` is attached to;
    /// 0 when its interface is gone (the link is then defunct). aya 0.14 does
    /// not expose this part of `bpf_link_info`, so it is read with the raw
    /// syscalls.
    pub fn pinned_link_ifindex(link_pin: &Path) -> std::io::Result<u32> {
        Self::pinned_link_info(link_pin).map(|(_, ifindex)| ifindex)
    }

    /// The id of the program the XDP link pinned at `link_pin` runs, and
    /// the interface index it is attached to.
    pub fn pinned_link_info(link_pin: &Path) -> std::io::Result<(u32, u32)> {
        use std::os::{fd::FromRawFd as _, unix::ffi::OsStrExt as _};
        const BPF_OBJ_GET: libc::c_long = 7;
        const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
        const BPF_LINK_TYPE_XDP: u32 = 6;
        let path = std::ffi::CString::new(link_pin.as_os_str().as_bytes())?;
        // union bpf_attr, zeroed: BPF_OBJ_GET reads `pathname` at offset 0.
        let mut attr = [0u64; 16];
        attr[0] = path.as_ptr() as u64;
        // SAFETY: the path outlives the call.
        let fd = unsafe { sys_bpf(BPF_OBJ_GET, &mut attr) }?;
        // SAFETY: the kernel just returned this fd to us.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
        // struct bpf_link_info: type, id, prog_id, then (8-aligned) the
        // per-type union, whose xdp member starts with ifindex.
        let mut info = [0u32; 64];
        let mut attr = [0u64; 16];
        attr[0] = u64::from(std::os::fd::AsRawFd::as_raw_fd(&fd) as u32) | (256u64 << 32);
        attr[1] = info.as_mut_ptr() as u64;
        // SAFETY: info is 256 bytes as announced and outlives the call.
        unsafe { sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr) }?;
        if info[0] != BPF_LINK_TYPE_XDP {
            return Err(std::io::Error::other(format!(
                "{} is not an XDP link",
                link_pin.display()
            )));
        }
        Ok((info[2], info[4]))
    }

    /// Every VIP in the map.
    pub fn vips(&self) -> Result<Vec<(VipKey, VipInfo)>> {
        self.vips
            .iter()
            .collect::<std::result::Result<_, _>>()
            .map_err(map_err(map_names::VIPS, "iterate"))
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
        let end = base
            .checked_add(len)
            .filter(|&e| e <= RING_POOL_SIZE)
            .ok_or(DataplaneError::RingRange { base, len })?;
        (base..end)
            .map(|i| match &self.ring_mem {
                Some(mem) => mem.get(i).ok_or(DataplaneError::Map {
                    map: map_names::RING,
                    op: "get",
                    source: Box::new(MapError::OutOfBounds {
                        index: i,
                        max_entries: lb_common::RING_POOL_SIZE,
                    }),
                }),
                None => self
                    .ring
                    .get(&i, 0)
                    .map_err(map_err(map_names::RING, "get")),
            })
            .collect()
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
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(map_names::AFFINITY, "remove")(e)),
            }
        }
        Ok(keys.len())
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
            // Checked: a wrapped index would land in another VIP's table.
            let index = base
                .checked_add(slot)
                .filter(|&i| i < RING_POOL_SIZE)
                .ok_or(DataplaneError::RingRange {
                    base,
                    len: slot.saturating_add(1),
                })?;
            match &self.ring_mem {
                Some(mem) => mem.set(index, value).ok_or(DataplaneError::Map {
                    map: map_names::RING,
                    op: "set",
                    source: Box::new(MapError::OutOfBounds {
                        index,
                        max_entries: lb_common::RING_POOL_SIZE,
                    }),
                })?,
                None => self
                    .ring
                    .set(index, value, 0)
                    .map_err(map_err(map_names::RING, "set"))?,
            }
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
    /// Every affinity entry. Read in batches of thousands per syscall
    /// (BPF_MAP_LOOKUP_BATCH) where the kernel has it: one at a time, a
    /// table of a million entries takes seconds, during which the daemon
    /// (single-threaded) would not react to health changes.
    pub fn affinity_entries(&self) -> Result<Vec<(AffinityKey, AffinityValue)>> {
        use aya::maps::IterableMap as _;
        use std::os::fd::AsFd as _;
        match lookup_batch(self.affinity.map().fd().as_fd()) {
            Ok(entries) => Ok(entries),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOTSUP | 524)) => {
                self.affinity_entries_one_by_one()
            }
            Err(e) => Err(DataplaneError::Map {
                map: map_names::AFFINITY,
                op: "batch lookup",
                source: Box::new(MapError::SyscallError(aya::sys::SyscallError {
                    call: "bpf_map_lookup_batch",
                    io_error: e,
                })),
            }),
        }
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

/// The ring pool's memory, shared with the XDP program (the map is created
/// with BPF_F_MMAPABLE). The kernel lays array elements out every
/// `round_up(value_size, 8)` bytes, so slot `i` is the u32 at byte `8 * i`.
/// Slots are aligned u32s, so each store is seen whole by the program.
struct RingMem {
    ptr: std::ptr::NonNull<u32>,
    slots: usize,
}

/// Bytes between two slots of an array map of u32 values.
const RING_STRIDE: usize = size_of::<u32>().next_multiple_of(8);

impl RingMem {
    fn bytes(slots: usize) -> usize {
        slots * RING_STRIDE
    }

    fn map(ring: &Array<MapData, u32>) -> Option<Self> {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        let slots = lb_common::RING_POOL_SIZE as usize;
        let fd = aya::maps::IterableMap::map(ring).fd().as_fd().as_raw_fd();
        // SAFETY: mapping a BPF array map's fd, shared, for its exact size;
        // the kernel refuses (MAP_FAILED) if the map is not mmapable.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                Self::bytes(slots),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            log::warn!(
                "cannot mmap the ring map ({}); writing slots through syscalls",
                std::io::Error::last_os_error()
            );
            return None;
        }
        std::ptr::NonNull::new(p.cast()).map(|ptr| Self { ptr, slots })
    }

    fn slot(&self, index: u32) -> Option<*mut u32> {
        let i = index as usize;
        // SAFETY: in bounds of the live mapping (checked).
        (i < self.slots).then(|| unsafe { self.ptr.as_ptr().byte_add(i * RING_STRIDE) })
    }

    fn set(&self, index: u32, value: u32) -> Option<()> {
        // SAFETY: a slot of the live mapping; volatile because the XDP
        // program reads the same memory concurrently.
        self.slot(index).map(|p| unsafe { p.write_volatile(value) })
    }

    fn get(&self, index: u32) -> Option<u32> {
        // SAFETY: as in `set`.
        self.slot(index).map(|p| unsafe { p.read_volatile() })
    }
}

impl Drop for RingMem {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `map` mapped, once.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), Self::bytes(self.slots)) };
    }
}

// SAFETY: the mapping is plain shared memory, owned by this handle alone.
unsafe impl Send for RingMem {}
