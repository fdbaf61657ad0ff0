//! The backend side of the tunnel modes (`stickylb decap`): attaching the
//! decap program (lb-ebpf's `stickylb-decap`, embedded as
//! `DECAP_OBJECT`) to a backend's interface, what it is doing, taking it
//! off, and checking the rest of what the backend needs (`check`).
//!
//! No daemon: the link and the maps are pinned under `<pin dir>/<interface>/`
//! (`link`, `SLB_DECAP_CFG`, `SLB_DECAP_SRC`, `SLB_DECAP_STATS`), so the
//! program keeps working after the command exits, and a later `attach` on
//! the same interface adopts the pinned maps and rewrites them in place
//! (and, after an upgrade, swaps this build's program into the pinned link):
//! the program is never detached, no frame is missed.

pub mod check;

use std::{
    collections::BTreeSet,
    io,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use aya::{
    EbpfLoader,
    maps::{
        Array, Map, MapData, PerCpuArray,
        lpm_trie::{Key, LpmTrie},
    },
    programs::{
        Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
};
use lb_common::{
    DECAP_PROGRAM_NAME, DEFAULT_GUE_PORT, DecapSettings, MAX_DECAP_SOURCES, decap_counter,
    decap_map_names,
};
use serde::Serialize;

use crate::{DECAP_OBJECT, dataplane, netdev};

/// Where `stickylb decap` pins, by default; one folder per interface in it.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/stickylb-decap";
/// Name of the pinned XDP link in an interface's folder.
pub const LINK_PIN_NAME: &str = "link";

/// How to attach.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpModeChoice {
    /// Driver (native) mode, else skb (generic) mode with a warning.
    Auto,
    /// Driver (native) mode only.
    Driver,
    /// Skb (generic) mode: works on every interface, slower.
    Skb,
}

/// An accepted load-balancer source: an address or a prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Source {
    pub addr: Ipv4Addr,
    pub len: u8,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl Serialize for Source {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl std::str::FromStr for Source {
    type Err = String;

    /// "10.0.0.1" (one address, /32) or "10.0.9.0/24"; host bits must be
    /// zero, so that what is listed is what is matched.
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, len) = if s.contains('/') {
            crate::config::parse_prefix(s)?
        } else {
            let addr = s
                .parse()
                .map_err(|_| format!("{s:?} is not an IPv4 address or prefix"))?;
            (addr, 32)
        };
        let masked = mask(addr, len);
        if masked != addr {
            return Err(format!(
                "{s} has host bits set: the prefix is {masked}/{len} (or give the address alone)"
            ));
        }
        Ok(Self { addr, len })
    }
}

fn mask(addr: Ipv4Addr, len: u8) -> Ipv4Addr {
    let bits = u32::from(addr);
    let m = if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    };
    Ipv4Addr::from(bits & m)
}

impl Source {
    fn key(self) -> Key<[u8; 4]> {
        Key::new(u32::from(self.len), self.addr.octets())
    }
}

/// What `attach` is asked to do.
#[derive(Clone, Debug)]
pub struct AttachOptions {
    pub interface: String,
    /// Accepted outer sources (at least one).
    pub allow: Vec<Source>,
    /// The outer destination accepted; `None`: the interface's primary IPv4.
    pub address: Option<Ipv4Addr>,
    /// GUE port; `None`: GUE off.
    pub gue_port: Option<u16>,
    pub ipip: bool,
    pub mode: XdpModeChoice,
    pub pin_dir: PathBuf,
}

impl AttachOptions {
    /// Options with the defaults: GUE on 6080, IP-in-IP on, auto mode.
    pub fn new(interface: &str, allow: Vec<Source>, pin_dir: &Path) -> Self {
        Self {
            interface: interface.to_owned(),
            allow,
            address: None,
            gue_port: Some(DEFAULT_GUE_PORT),
            ipip: true,
            mode: XdpModeChoice::Auto,
            pin_dir: pin_dir.to_owned(),
        }
    }
}

/// What the program accepts, as read back from its maps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Settings {
    pub address: Ipv4Addr,
    pub ipip: bool,
    pub gue_port: Option<u16>,
    pub sources: Vec<Source>,
}

/// The decap program on one interface, as `status` reports it.
#[derive(Clone, Debug, Serialize)]
pub struct InterfaceStatus {
    pub interface: String,
    pub pin_dir: PathBuf,
    /// Our link is pinned and the interface runs its program.
    pub attached: bool,
    /// "driver" or "skb" (or "hw").
    pub mode: Option<&'static str>,
    pub link_id: Option<u32>,
    pub program_id: Option<u32>,
    pub settings: Option<Settings>,
    /// Counter name → sum over CPUs, in `decap_counter` order (an object
    /// in JSON).
    #[serde(serialize_with = "counters_object")]
    pub counters: Vec<(&'static str, u64)>,
    /// What is wrong with what is pinned, if anything.
    pub problem: Option<String>,
}

fn counters_object<S: serde::Serializer>(
    counters: &[(&'static str, u64)],
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap as _;
    let mut m = s.serialize_map(Some(counters.len()))?;
    for (name, v) in counters {
        m.serialize_entry(name, v)?;
    }
    m.end()
}

/// What `attach` did.
#[derive(Clone, Debug, Serialize)]
pub struct AttachReport {
    /// false: attached now; true: was attached, settings rewritten in place.
    pub updated: bool,
    pub status: InterfaceStatus,
    /// Things the operator should know (a fallback to skb mode, a mode
    /// that was asked for and not changed).
    pub warnings: Vec<String>,
}

/// The pinned objects of `interface`.
#[derive(Clone, Debug)]
pub struct Pins {
    pub dir: PathBuf,
}

impl Pins {
    pub fn new(pin_dir: &Path, interface: &str) -> Self {
        Self {
            dir: pin_dir.join(interface),
        }
    }

    pub fn link(&self) -> PathBuf {
        self.dir.join(LINK_PIN_NAME)
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Every path this command pins here.
    pub fn all(&self) -> Vec<PathBuf> {
        let mut v = vec![self.link()];
        v.extend(decap_map_names::ALL.iter().map(|n| self.map(n)));
        v
    }
}

/// The maps, opened from their pins.
struct Maps {
    cfg: Array<MapData, DecapSettings>,
    sources: LpmTrie<MapData, [u8; 4], u8>,
    stats: PerCpuArray<MapData, u64>,
}

impl Maps {
    fn open(pins: &Pins) -> anyhow::Result<Self> {
        let open = |name: &str| {
            let path = pins.map(name);
            MapData::from_pin(&path)
                .and_then(Map::from_map_data)
                .with_context(|| format!("open the map pinned at {}", path.display()))
        };
        let wrong = |name: &str| {
            format!(
                "the map pinned at {} is not this stickylb's (another version?); \
                 `stickylb decap detach` and attach again",
                pins.map(name).display()
            )
        };
        Ok(Self {
            cfg: Array::try_from(open(decap_map_names::CFG)?)
                .with_context(|| wrong(decap_map_names::CFG))?,
            sources: LpmTrie::try_from(open(decap_map_names::SOURCES)?)
                .with_context(|| wrong(decap_map_names::SOURCES))?,
            stats: PerCpuArray::try_from(open(decap_map_names::STATS)?)
                .with_context(|| wrong(decap_map_names::STATS))?,
        })
    }

    fn settings(&self) -> anyhow::Result<Settings> {
        let cfg = self.cfg.get(&0, 0).context("read SLB_DECAP_CFG")?;
        let mut sources = Vec::new();
        for key in self.sources.keys() {
            let key = key.context("list SLB_DECAP_SRC")?;
            sources.push(Source {
                addr: Ipv4Addr::from(key.data()),
                len: key.prefix_len() as u8,
            });
        }
        sources.sort();
        let port = u16::from_be_bytes(cfg.gue_port);
        Ok(Settings {
            address: Ipv4Addr::from(cfg.local_addr),
            ipip: cfg.ipip != 0,
            gue_port: (port != 0).then_some(port),
            sources,
        })
    }

    fn counters(&self) -> anyhow::Result<Vec<(&'static str, u64)>> {
        decap_counter::NAMES
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let per_cpu = self
                    .stats
                    .get(&(i as u32), 0)
                    .context("read SLB_DECAP_STATS")?;
                Ok((*name, per_cpu.iter().sum()))
            })
            .collect()
    }

    /// Writes what `opts` asks for: new sources first, then the settings,
    /// then the sources no longer wanted go, so a source kept in both is
    /// never missing.
    fn write(&mut self, address: Ipv4Addr, opts: &AttachOptions) -> anyhow::Result<()> {
        let want: BTreeSet<Source> = opts.allow.iter().copied().collect();
        for s in &want {
            self.sources
                .insert(&s.key(), 1, 0)
                .with_context(|| format!("add source {s} to SLB_DECAP_SRC"))?;
        }
        let cfg = DecapSettings {
            local_addr: address.octets(),
            gue_port: opts.gue_port.unwrap_or(0).to_be_bytes(),
            ipip: u8::from(opts.ipip),
            _pad: 0,
        };
        self.cfg.set(0, cfg, 0).context("write SLB_DECAP_CFG")?;
        let have: Vec<Key<[u8; 4]>> = self
            .sources
            .keys()
            .collect::<Result<_, _>>()
            .context("list SLB_DECAP_SRC")?;
        for key in have {
            let s = Source {
                addr: Ipv4Addr::from(key.data()),
                len: key.prefix_len() as u8,
            };
            if !want.contains(&s) {
                self.sources
                    .remove(&key)
                    .with_context(|| format!("remove source {s} from SLB_DECAP_SRC"))?;
            }
        }
        Ok(())
    }
}

/// Mounts bpffs on /sys/fs/bpf when the pins go there and it is missing
/// (a fresh machine), then makes the folder.
fn ensure_pin_dir(dir: &Path) -> anyhow::Result<()> {
    let root = Path::new("/sys/fs/bpf");
    if dir.starts_with(root) && !is_mount_point(root) {
        let c = |s: &str| std::ffi::CString::new(s).expect("no NUL");
        let (src, target, fstype) = (c("bpf"), c("/sys/fs/bpf"), c("bpf"));
        // SAFETY: valid NUL-terminated strings; no data argument.
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            bail!(
                "no bpffs on /sys/fs/bpf, and mounting one failed ({}); mount it: \
                 mount -t bpf bpf /sys/fs/bpf",
                io::Error::last_os_error()
            );
        }
    }
    std::fs::create_dir_all(dir).with_context(|| {
        format!(
            "create the pin folder {} (it must be on a bpffs)",
            dir.display()
        )
    })
}

fn is_mount_point(path: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mounts").is_ok_and(|m| {
        m.lines()
            .any(|l| l.split_whitespace().nth(1) == path.to_str())
    })
}

fn ifindex_of(interface: &str) -> anyhow::Result<u32> {
    netdev::ifindex(interface).with_context(|| {
        format!("no network interface named {interface:?} here (`ip link` lists them)")
    })
}

/// The name of loaded program `id`, for a message.
fn program_name(id: u32) -> Option<String> {
    aya::programs::loaded_programs()
        .flatten()
        .find(|p| p.id() == id)
        .and_then(|p| p.name_as_str().map(str::to_owned))
}

/// The pinned link's id and program id.
fn pinned_link_ids(link: &Path) -> anyhow::Result<(u32, u32)> {
    let pinned = PinnedLink::from_pin(link)
        .with_context(|| format!("open the XDP link pinned at {}", link.display()))?;
    let info = FdLink::from(pinned)
        .info()
        .with_context(|| format!("read the XDP link pinned at {}", link.display()))?;
    Ok((info.id(), info.program_id()))
}

/// How the pins of an interface relate to what runs on it.
enum PinState {
    /// No link pinned.
    None,
    /// Our link runs on the interface (link id, program id, mode).
    Ours {
        link_id: u32,
        program_id: u32,
        mode: &'static str,
    },
    /// The link lost its interface (deleted): it does nothing any more.
    Defunct,
    /// The link is attached elsewhere (another interface of that name in
    /// another namespace, or a renamed one).
    Elsewhere { ifindex: u32 },
}

fn pin_state(pins: &Pins, ifindex: u32) -> anyhow::Result<PinState> {
    let link = pins.link();
    if !link.exists() {
        return Ok(PinState::None);
    }
    let on = dataplane::Dataplane::pinned_link_ifindex(&link)
        .with_context(|| format!("inspect the XDP link pinned at {}", link.display()))?;
    if on == 0 {
        return Ok(PinState::Defunct);
    }
    let (link_id, program_id) = pinned_link_ids(&link)?;
    let xdp = dataplane::xdp_on_link(ifindex)
        .with_context(|| format!("ask the kernel which XDP programs interface #{ifindex} has"))?;
    match xdp.programs().find(|(_, id)| *id == program_id) {
        Some((mode, _)) if on == ifindex => Ok(PinState::Ours {
            link_id,
            program_id,
            mode,
        }),
        _ => Ok(PinState::Elsewhere { ifindex: on }),
    }
}

fn elsewhere(pins: &Pins, interface: &str, ifindex: u32) -> anyhow::Error {
    anyhow::anyhow!(
        "the XDP link pinned at {} is attached to interface #{ifindex}, not to {interface} \
         here (an interface of that name in another network namespace?); give this \
         interface its own --pin-dir, or detach it where it is attached",
        pins.link().display()
    )
}

/// Removes whatever this command pinned for an interface, and its folder
/// (and the pin folder, once empty).
fn remove_pins(pins: &Pins) -> anyhow::Result<()> {
    for p in pins.all() {
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("remove {}", p.display())),
        }
    }
    for dir in [Some(pins.dir.as_path()), pins.dir.parent()]
        .into_iter()
        .flatten()
    {
        // Only when empty: something else pinned there is not ours.
        let _ = std::fs::remove_dir(dir);
    }
    Ok(())
}

/// Attaches the decap program to `opts.interface` (or, when it is attached
/// already, rewrites its settings and sources in place).
pub fn attach(opts: &AttachOptions) -> anyhow::Result<AttachReport> {
    if opts.allow.is_empty() {
        bail!("no accepted source: give the load balancers' addresses with --allow ADDR[/LEN]");
    }
    if opts.allow.len() > MAX_DECAP_SOURCES as usize {
        bail!(
            "{} accepted sources; at most {MAX_DECAP_SOURCES} fit: give prefixes instead",
            opts.allow.len()
        );
    }
    if opts.gue_port == Some(0) {
        bail!("--gue-port 0 is no port; to turn GUE off, give --no-gue");
    }
    if opts.gue_port.is_none() && !opts.ipip {
        bail!("--no-gue and --no-ipip together leave nothing to decapsulate");
    }
    let iface = opts.interface.as_str();
    let ifindex = ifindex_of(iface)?;
    let address = match opts.address {
        Some(a) => a,
        None => primary_ipv4(iface)?,
    };
    let pins = Pins::new(&opts.pin_dir, iface);
    let mut warnings = Vec::new();
    match pin_state(&pins, ifindex)? {
        PinState::Ours {
            mode, program_id, ..
        } => {
            // Opening them typed checks their key and value sizes, before a
            // program is loaded on them.
            let mut maps = Maps::open(&pins)?;
            if replace_program(&pins, program_id)? {
                warnings.push(format!(
                    "the program on {iface} was another build's: replaced by this one's in the \
                     same link (no frame missed)"
                ));
            }
            maps.write(address, opts)?;
            let asked = match opts.mode {
                XdpModeChoice::Auto => None,
                XdpModeChoice::Driver => Some("driver"),
                XdpModeChoice::Skb => Some("skb"),
            };
            if asked.is_some_and(|a| a != mode) {
                warnings.push(format!(
                    "{iface} stays in {mode} mode (the program was only updated in place); \
                     to change the mode, `stickylb decap detach --interface {iface}` and \
                     attach again"
                ));
            }
            return Ok(AttachReport {
                updated: true,
                status: status_of(&opts.pin_dir, iface)?,
                warnings,
            });
        }
        PinState::Elsewhere { ifindex } => return Err(elsewhere(&pins, iface, ifindex)),
        PinState::Defunct => {
            warnings.push(format!(
                "the link pinned at {} had lost its interface; replaced",
                pins.link().display()
            ));
        }
        PinState::None => {}
    }
    let xdp = dataplane::xdp_on_link(ifindex)
        .with_context(|| format!("ask the kernel which XDP programs {iface} has"))?;
    if let Some((mode, id)) = xdp.programs().next() {
        let name = program_name(id).unwrap_or_else(|| "?".into());
        let hint = if name == lb_common::PROGRAM_NAME {
            "It is stickylb's load balancer: a backend does not run one on the same interface"
                .to_owned()
        } else if name == DECAP_PROGRAM_NAME {
            "It is a decap program attached with another --pin-dir: give that one".to_owned()
        } else {
            format!(
                "Remove it first (`ip link set dev {iface} xdp off`, or with the tool that \
                 attached it)"
            )
        };
        bail!(
            "{iface} already has an XDP program attached in {mode} mode (id {id}, name {name}); \
             an interface runs one, so the decap program cannot be added. {hint}"
        );
    }
    // Fresh maps: what an earlier, detached program left is not adopted.
    remove_pins(&pins)?;
    ensure_pin_dir(&pins.dir)?;
    if let Err(e) = attach_new(opts, address, &pins, &mut warnings) {
        // Nothing half made stays pinned (and so attached) behind an error.
        let _ = remove_pins(&pins);
        return Err(e);
    }
    Ok(AttachReport {
        updated: false,
        status: status_of(&opts.pin_dir, iface)?,
        warnings,
    })
}

/// This build's program, loaded with the maps pinned in `pins` (adopted,
/// or created and pinned there).
fn load_program(pins: &Pins) -> anyhow::Result<aya::Ebpf> {
    let mut loader = EbpfLoader::new();
    for name in decap_map_names::ALL {
        loader.map_pin_path(name, pins.map(name));
    }
    let mut ebpf = loader
        .load(DECAP_OBJECT)
        .context("load the decap object (are you root, with BPF enabled?)")?;
    decap_program(&mut ebpf)?
        .load()
        .context("the kernel refused the decap program")?;
    Ok(ebpf)
}

fn decap_program(ebpf: &mut aya::Ebpf) -> anyhow::Result<&mut Xdp> {
    ebpf.program_mut(DECAP_PROGRAM_NAME)
        .context("the decap object has no program stickylb_decap")?
        .try_into()
        .context("stickylb_decap is not an XDP program")
}

/// When the pinned link runs another program than this build's (an
/// upgrade), puts this build's in its place: the kernel swaps the link's
/// program atomically, so the interface is never without one. Whether it
/// did. Programs are compared by tag (a hash of the instructions, map
/// references left out).
fn replace_program(pins: &Pins, running: u32) -> anyhow::Result<bool> {
    let running_tag = aya::programs::loaded_programs()
        .flatten()
        .find(|p| p.id() == running)
        .map(|p| p.tag());
    let mut ebpf = load_program(pins)?;
    let prog = decap_program(&mut ebpf)?;
    let ours = prog.info().context("read the loaded program's info")?.tag();
    if running_tag == Some(ours) {
        return Ok(false);
    }
    let link = pins.link();
    let pinned = PinnedLink::from_pin(&link)
        .with_context(|| format!("open the XDP link pinned at {}", link.display()))?;
    let xdp_link = XdpLink::try_from(FdLink::from(pinned))
        .with_context(|| format!("{} is not an XDP link", link.display()))?;
    let id = prog
        .attach_to_link(xdp_link)
        .context("replace the program in the pinned link")?;
    // The pin keeps the link; our handle on it may go.
    drop(prog.take_link(id));
    Ok(true)
}

/// Loads the program with its maps pinned in `pins`, writes the settings,
/// attaches it and pins the link.
fn attach_new(
    opts: &AttachOptions,
    address: Ipv4Addr,
    pins: &Pins,
    warnings: &mut Vec<String>,
) -> anyhow::Result<()> {
    let iface = opts.interface.as_str();
    let mut ebpf = load_program(pins)?;
    let prog = decap_program(&mut ebpf)?;
    // Settings before attaching: the first frame already meets them.
    Maps::open(pins)?.write(address, opts)?;
    let tries: &[(XdpMode, &str)] = match opts.mode {
        XdpModeChoice::Auto => &[(XdpMode::Driver, "driver"), (XdpMode::Skb, "skb")],
        XdpModeChoice::Driver => &[(XdpMode::Driver, "driver")],
        XdpModeChoice::Skb => &[(XdpMode::Skb, "skb")],
    };
    let mut refused = None;
    let mut attached = None;
    for &(mode, name) in tries {
        match prog.attach(iface, mode) {
            Ok(id) => {
                attached = Some(id);
                break;
            }
            Err(e) => refused = Some((name, anyhow::Error::from(e))),
        }
    }
    let Some(id) = attached else {
        let (mode, e) = refused.expect("a mode was tried");
        return Err(e.context(format!(
            "cannot attach the decap program to {iface} in {mode} mode{}",
            if mode == "driver" {
                "; retry with --xdp-mode skb"
            } else {
                ""
            }
        )));
    };
    if let Some((mode, e)) = refused {
        warnings.push(format!(
            "{iface} refused {mode} mode ({e:#}); attached in skb (generic) mode"
        ));
    }
    let link = prog.take_link(id).context("take the XDP link")?;
    let link = FdLink::try_from(link).context("the kernel gave no BPF link (kernel < 5.9?)")?;
    // Until pinned, the link lives only as long as this process: an error
    // here leaves nothing attached.
    link.pin(pins.link())
        .with_context(|| format!("pin the XDP link at {}", pins.link().display()))?;
    Ok(())
}

/// The interface's primary IPv4 address: the first the kernel lists.
pub fn primary_ipv4(interface: &str) -> anyhow::Result<Ipv4Addr> {
    netdev::addresses()
        .ipv4
        .into_iter()
        .find(|(i, _)| i == interface)
        .map(|(_, a)| a)
        .with_context(|| {
            format!(
                "{interface} has no IPv4 address; give the address the load balancers send \
                 to with --address"
            )
        })
}

/// The decap program on `interface`.
pub fn status_of(pin_dir: &Path, interface: &str) -> anyhow::Result<InterfaceStatus> {
    let pins = Pins::new(pin_dir, interface);
    let mut st = InterfaceStatus {
        interface: interface.to_owned(),
        pin_dir: pins.dir.clone(),
        attached: false,
        mode: None,
        link_id: None,
        program_id: None,
        settings: None,
        counters: Vec::new(),
        problem: None,
    };
    let Some(ifindex) = netdev::ifindex(interface) else {
        st.problem = Some(format!("no interface named {interface} here"));
        return Ok(st);
    };
    match pin_state(&pins, ifindex)? {
        PinState::Ours {
            link_id,
            program_id,
            mode,
        } => {
            st.attached = true;
            st.mode = Some(mode);
            st.link_id = Some(link_id);
            st.program_id = Some(program_id);
        }
        PinState::None => {}
        PinState::Defunct => {
            st.problem = Some("the pinned link lost its interface (it was deleted)".into());
        }
        PinState::Elsewhere { ifindex } => {
            st.problem = Some(format!(
                "the pinned link is attached to interface #{ifindex}, not to {interface} here"
            ));
        }
    }
    if pins.map(decap_map_names::CFG).exists() {
        let maps = Maps::open(&pins)?;
        st.settings = Some(maps.settings()?);
        st.counters = maps.counters()?;
    }
    Ok(st)
}

/// Every interface with pins under `pin_dir`.
pub fn pinned_interfaces(pin_dir: &Path) -> anyhow::Result<Vec<String>> {
    let entries = match std::fs::read_dir(pin_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("list {}", pin_dir.display())),
    };
    let mut out = Vec::new();
    for e in entries {
        let e = e.with_context(|| format!("list {}", pin_dir.display()))?;
        if e.path().is_dir() {
            out.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    out.sort();
    Ok(out)
}

/// What `detach` did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DetachReport {
    pub interface: String,
    /// The program was running on the interface and is off it now.
    pub detached: bool,
    /// Pins removed.
    pub removed: Vec<PathBuf>,
}

/// Detaches the decap program from `interface` and removes its pins.
/// Nothing attached and nothing pinned is no error (`detached` false).
pub fn detach(pin_dir: &Path, interface: &str) -> anyhow::Result<DetachReport> {
    let pins = Pins::new(pin_dir, interface);
    let link = pins.link();
    let mut detached = false;
    if link.exists() {
        if let Some(ifindex) = netdev::ifindex(interface)
            && let PinState::Elsewhere { ifindex: on } = pin_state(&pins, ifindex)?
        {
            return Err(elsewhere(&pins, interface, on));
        }
        detached = dataplane::Dataplane::pinned_link_ifindex(&link).unwrap_or(0) != 0;
    }
    let removed: Vec<PathBuf> = pins.all().into_iter().filter(|p| p.exists()).collect();
    // Removing the link's pin drops the last reference to it: the kernel
    // detaches the program then.
    remove_pins(&pins)?;
    Ok(DetachReport {
        interface: interface.to_owned(),
        detached,
        removed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse_as_addresses_or_prefixes() {
        assert_eq!(
            "10.0.0.1".parse::<Source>().unwrap(),
            Source {
                addr: Ipv4Addr::new(10, 0, 0, 1),
                len: 32
            }
        );
        assert_eq!(
            "10.0.9.0/24".parse::<Source>().unwrap().to_string(),
            "10.0.9.0/24"
        );
        assert_eq!("0.0.0.0/0".parse::<Source>().unwrap().len, 0);
        let e = "10.0.9.5/24".parse::<Source>().unwrap_err();
        assert!(e.contains("10.0.9.0/24"), "{e}");
        assert!("10.0.9.0/33".parse::<Source>().is_err());
        assert!("lb1".parse::<Source>().is_err());
    }

    #[test]
    fn pins_are_per_interface() {
        let p = Pins::new(Path::new("/sys/fs/bpf/stickylb-decap"), "eth0");
        assert_eq!(
            p.all(),
            [
                "/sys/fs/bpf/stickylb-decap/eth0/link",
                "/sys/fs/bpf/stickylb-decap/eth0/SLB_DECAP_CFG",
                "/sys/fs/bpf/stickylb-decap/eth0/SLB_DECAP_SRC",
                "/sys/fs/bpf/stickylb-decap/eth0/SLB_DECAP_STATS",
            ]
            .map(PathBuf::from)
        );
    }
}
