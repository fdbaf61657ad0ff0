//! The network of docs/deploying.md, built with exactly the guide's
//! addresses, and the means to run the guide's blocks in it: each "host"
//! (the load balancer, each backend) is a network namespace plus a mount
//! namespace of its own, so that what the guide writes (`/etc/stickylb/`,
//! `/etc/sysctl.d/`, `/usr/local/bin/stickylb`, `/run/stickylb/`, pins on
//! `/sys/fs/bpf`) lands in that host's private copies and never in the
//! machine's.
//!
//! ```text
//!   <id>-cl eth0 198.51.100.2 + clients .3-.202/24, default via .1
//!      |
//!   <id>-rt eth2 198.51.100.1/24, eth0 10.0.0.254/24, eth1 10.20.0.1/24; ip_forward
//!      | eth0 (p-rt)                                  | eth1 (p-rt)
//!   <id>-br br0: p-lb (XDP_PASS), p-b1, p-b2       <id>-br2 br0: p-t1, p-t2
//!   <id>-lb 10.0.0.1  <id>-b1 10.0.0.11  -b2 .12    <id>-t1 10.20.0.11  -t2 .12
//!   <id>-host: an empty namespace, the machine's own stack in the guide's
//!   "network namespace" section (which enters `lb` from it)
//! ```
//!
//! A host's mount namespace is held by a `sleep` started in it (its
//! "holder"), and holds: a tmpfs on `/run` (with `/run/netns/lb` bound to the
//! LB's namespace on the LB host), an overlay on `/etc` whose changes go to
//! that tmpfs, a tmpfs on `/usr/local/bin`, and a bpffs of its own on
//! `/sys/fs/bpf`. Killing the holder and every process in the namespace
//! frees it, and with it every pin (the kernel then detaches pinned
//! programs): a failed test leaves nothing pinned on the machine's bpffs but
//! the bridge port's XDP_PASS program, which `Drop` and the `Reaper` remove.

use std::{
    fs,
    net::Ipv4Addr,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use lb_user::dataplane::{Dataplane, LINK_PIN_NAME};

use crate::netns::{
    ChildGuard, Netns, Reaper, Result, add_bridge, attach_peer_xdp, client_addrs, plug_into_bridge,
    start_backend_server, wait_for,
};

pub const LB_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
pub const ROUTER_SEGMENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 254);
pub const ROUTER_TUNNEL_NET: Ipv4Addr = Ipv4Addr::new(10, 20, 0, 1);
pub const ROUTER_CLIENTS: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
pub const CLIENT_MAIN: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
pub const WEB: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
pub const API: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 20);
/// The network namespace name the guide's namespace section uses for the LB.
pub const LB_NETNS_ALIAS: &str = "lb";

/// The backends, in the order of their server names (`backend-<i>`): the
/// DSR ones on the LB's segment, then the tunnel ones behind the router.
pub const BACKENDS: [Ipv4Addr; 4] = [
    Ipv4Addr::new(10, 0, 0, 11),
    Ipv4Addr::new(10, 0, 0, 12),
    Ipv4Addr::new(10, 20, 0, 11),
    Ipv4Addr::new(10, 20, 0, 12),
];
pub const DSR_BACKENDS: usize = 2;

/// Client number `i` (i < 200): 198.51.100.3-202.
pub fn client_addr(i: usize) -> Ipv4Addr {
    assert!(i < 200);
    Ipv4Addr::new(198, 51, 100, 3 + i as u8)
}

/// What every block's shell starts with: a PATH that finds the guide's
/// `/usr/local/bin/stickylb` first, and nothing of the test's environment.
const PATH: &str = "PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Prepares a host's mount namespace, then holds it. `$1`: the ready file;
/// `$2`: "lb" to bind this network namespace at /run/netns/lb.
const HOLDER_SCRIPT: &str = r#"
set -e
mount -t tmpfs -o mode=0755 dpl-run /run
mkdir -p /run/netns /run/.dpl-etc/upper /run/.dpl-etc/work
mount -t overlay dpl-etc -o lowerdir=/etc,upperdir=/run/.dpl-etc/upper,workdir=/run/.dpl-etc/work /etc
mount -t tmpfs -o mode=0755 dpl-bin /usr/local/bin
mount -t bpf dpl-bpf /sys/fs/bpf
if [ "$2" = lb ]; then
    touch /run/netns/lb
    mount --bind /proc/self/ns/net /run/netns/lb
fi
touch "$1"
exec sleep infinity
"#;

/// A machine of the guide: a network namespace and a private mount
/// namespace (see the module's comment).
pub struct Host {
    /// Processes started in it; killed before the holder.
    pub procs: Vec<GroupGuard>,
    holder: ChildGuard,
    pub ns: Netns,
}

impl Host {
    fn new(name: &str, tmp: &Path, alias_lb: bool) -> Result<Self> {
        let ns = Netns::new(name)?;
        let ready = tmp.join(format!("{name}.ready"));
        let holder = ChildGuard(
            ns.command("unshare")
                .args(["--mount", "--propagation", "private", "sh", "-c"])
                .arg(HOLDER_SCRIPT)
                .arg("dpl-holder")
                .arg(&ready)
                .arg(if alias_lb { "lb" } else { "-" })
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| format!("start the mount namespace of {name}: {e}"))?,
        );
        let mut host = Self {
            procs: Vec::new(),
            holder,
            ns,
        };
        let mut exited = None;
        wait_for(Duration::from_secs(5), || {
            exited = host.holder.exited();
            ready.exists() || exited.is_some()
        });
        if !ready.exists() {
            let mut err = String::new();
            if let Some(e) = host.holder.0.stderr.as_mut() {
                use std::io::Read as _;
                let _ = e.read_to_string(&mut err);
            }
            return Err(format!(
                "the mount namespace of {name} was not set up ({exited:?}): {}",
                err.trim()
            ));
        }
        Ok(host)
    }

    /// The mount namespace's file.
    pub fn mnt(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/mnt", self.holder.pid()))
    }

    /// `path` inside this host's mount namespace, as seen from the test.
    pub fn path(&self, path: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root{path}", self.holder.pid()))
    }

    /// `sh -eu -c text` in this host's mount namespace and in the network
    /// namespace `net` (its own, or another), from `wd`; killed after
    /// `limit` if given.
    pub fn shell(&self, net: &Netns, wd: &Path, text: &str, limit: Option<Duration>) -> Command {
        shell(Some(&self.mnt()), net, wd, text, limit)
    }
}

/// `sh -eu -c text` in network namespace `net` (and mount namespace `mnt`,
/// else the machine's), from `wd`, with nothing of the test's environment;
/// killed after `limit` if given (a block that hangs must fail the test,
/// not hold it).
pub fn shell(
    mnt: Option<&Path>,
    net: &Netns,
    wd: &Path,
    text: &str,
    limit: Option<Duration>,
) -> Command {
    let mut c = match limit {
        Some(l) => {
            let mut c = Command::new("timeout");
            c.args([
                "--kill-after=2",
                &format!("{}s", l.as_secs().max(1)),
                "nsenter",
            ]);
            c
        }
        None => Command::new("nsenter"),
    };
    if let Some(m) = mnt {
        c.arg(format!("--mount={}", m.display()));
    }
    c.arg(format!("--net={}", net.path().display()))
        .arg(format!("--wd={}", wd.display()))
        .args(["--", "env", "-i", PATH, "HOME=/root", "LC_ALL=C.UTF-8"])
        .args(["sh", "-eu", "-c", text])
        .stdin(Stdio::null());
    c
}

/// A process started in its own process group, the whole group killed
/// (SIGKILL) and the process reaped on drop: a block's shell and whatever
/// it started.
pub struct GroupGuard(pub Child);

impl GroupGuard {
    pub fn spawn(cmd: &mut Command) -> Result<Self> {
        cmd.process_group(0)
            .spawn()
            .map(Self)
            .map_err(|e| format!("{cmd:?}: {e}"))
    }

    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.0.try_wait().ok().flatten()
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group of a child we started.
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

/// The whole network. Field order is drop order: servers, the hosts
/// (their processes, then their holders), the plain namespaces, then the
/// watcher that cleans up if this process dies first.
pub struct Bed {
    pub servers: Vec<ChildGuard>,
    pub lb: Host,
    /// The backends' hosts, in the order of `BACKENDS`.
    pub backends: Vec<Host>,
    /// The machine's own network namespace in the guide's namespace section.
    pub host: Netns,
    pub router: Netns,
    pub client: Netns,
    pub bridge: Netns,
    pub bridge2: Netns,
    pub peer_pin: PathBuf,
    pub clients: Vec<Ipv4Addr>,
    /// Scratch: logs, ready files, the working folder of the blocks.
    pub tmp: PathBuf,
    _reaper: Reaper,
}

impl Bed {
    /// Builds the network and starts each backend's HTTP server
    /// (`server_bin`, on 0.0.0.0:80); the guide's blocks do the rest.
    pub fn up(server_bin: &Path) -> Result<Self> {
        crate::require_root();
        let id = format!("dpl-{}", std::process::id() % 100_000);
        let tmp = std::env::temp_dir().join(&id);
        let peer_pin = Path::new("/sys/fs/bpf").join(format!("{id}-peer"));
        let reaper = Reaper::spawn(&id, &[&tmp, &peer_pin])?;
        // A run killed before its cleanup may have left these behind.
        crate::netns::remove_leftovers(&id, &[&tmp, &peer_pin]);
        fs::create_dir_all(&tmp).map_err(|e| e.to_string())?;
        let n = |s: &str| format!("{id}-{s}");
        let bridge = Netns::new(&n("br"))?;
        let bridge2 = Netns::new(&n("br2"))?;
        let router = Netns::new(&n("rt"))?;
        let client = Netns::new(&n("cl"))?;
        let host = Netns::new(&n("host"))?;
        let lb = Host::new(&n("lb"), &tmp, true)?;
        let backends = ["b1", "b2", "t1", "t2"]
            .iter()
            .map(|b| Host::new(&n(b), &tmp, false))
            .collect::<Result<Vec<_>>>()?;
        let mut bed = Self {
            servers: Vec::new(),
            lb,
            backends,
            host,
            router,
            client,
            bridge,
            bridge2,
            peer_pin,
            clients: (0..200).map(client_addr).collect(),
            tmp,
            _reaper: reaper,
        };
        bed.wire()?;
        for (i, b) in bed.backends.iter().enumerate() {
            let s = start_backend_server(&b.ns, server_bin, &bed.tmp, i, None)?;
            bed.servers.push(s);
        }
        Ok(bed)
    }

    /// What the guide takes as given: links, the hosts' own addresses and
    /// default routes, the router forwarding; nothing stickylb needs.
    fn wire(&self) -> Result<()> {
        add_bridge(&self.bridge)?;
        add_bridge(&self.bridge2)?;
        // The router's eth0 on the segment, eth1 in the tunnel subnet.
        self.bridge.add_veth("p-rt", &self.router, "eth0")?;
        self.bridge2.add_veth("p-rt", &self.router, "eth1")?;
        for br in [&self.bridge, &self.bridge2] {
            br.ip(&["link", "set", "p-rt", "master", "br0"])?;
            br.ip(&["link", "set", "p-rt", "up"])?;
        }
        self.router.add_veth("eth2", &self.client, "eth0")?;
        self.router.ip_batch(&[
            "link set eth0 up".into(),
            "link set eth1 up".into(),
            "link set eth2 up".into(),
            format!("addr add {ROUTER_SEGMENT}/24 dev eth0"),
            format!("addr add {ROUTER_TUNNEL_NET}/24 dev eth1"),
            format!("addr add {ROUTER_CLIENTS}/24 dev eth2"),
        ])?;
        self.router.sysctl("net.ipv4.ip_forward", "1")?;
        self.client.ip(&["link", "set", "eth0", "up"])?;
        plug_into_bridge(&self.bridge, &self.lb.ns, "p-lb")?;
        self.lb.ns.ip_batch(&[
            format!("addr add {LB_ADDR}/24 dev eth0"),
            format!("route add default via {ROUTER_SEGMENT}"),
        ])?;
        for (i, (b, addr)) in self.backends.iter().zip(BACKENDS).enumerate() {
            let (br, gw) = if i < DSR_BACKENDS {
                (&self.bridge, ROUTER_SEGMENT)
            } else {
                (&self.bridge2, ROUTER_TUNNEL_NET)
            };
            plug_into_bridge(br, &b.ns, &format!("p-{i}"))?;
            b.ns.ip_batch(&[
                format!("addr add {addr}/24 dev eth0"),
                format!("route add default via {gw}"),
            ])?;
        }
        client_addrs(
            &self.client,
            CLIENT_MAIN,
            &self.clients,
            &[format!("route add default via {ROUTER_CLIENTS}")],
        )?;
        // In driver mode a veth drops what XDP_TX sends unless its peer has
        // an XDP program: a real NIC needs none of this.
        attach_peer_xdp(&self.bridge, vec![("p-lb".into(), self.peer_pin.clone())])
    }

    /// Whether an XDP program is attached to the LB's eth0.
    pub fn lb_has_xdp(&self) -> Result<bool> {
        Ok(self.lb.ns.ip(&["link", "show", "eth0"])?.contains("xdp"))
    }

    /// The LB's control socket, reached from the test.
    pub fn control_socket(&self) -> PathBuf {
        self.lb.path("/run/stickylb/stickylb.sock")
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        let _ = Dataplane::detach_pinned(&self.peer_pin.join(LINK_PIN_NAME));
        let _ = fs::remove_dir_all(&self.peer_pin);
        let _ = fs::remove_dir_all(&self.tmp);
    }
}

/// Runs `cmd` to completion: its output, whatever its exit status.
pub fn output(cmd: &mut Command) -> Result<Output> {
    cmd.output().map_err(|e| format!("{cmd:?}: {e}"))
}
