//! The backends' side of the tunnel targets: `stickylb decap` attached to
//! every backend's eth0 (driver mode, accepting the load balancer's address,
//! to the backend's own address), its counters, and detaching it again; and
//! the load balancer's tunnel settings in the daemon's pinned map.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use aya::maps::{Array, Map, MapData};
use lb_common::{DEFAULT_TUNNEL_TTL, TunnelSettings, map_names};

use crate::netns::{LB_ADDR, Reaper, Topology, backend_addr};

/// The GUE port of the daemon's `[tunnel]` and of every backend's decap.
pub const GUE_PORT: u16 = lb_common::DEFAULT_GUE_PORT;

/// The decap counters that matter here, summed over the backends.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counts {
    pub ipip: u64,
    pub gue: u64,
    /// Rejected for any reason (source, destination, malformed).
    pub rejected: u64,
}

/// The decap program on every backend, detached (pins removed) on drop.
pub struct Decap {
    bin: PathBuf,
    /// `<root>/b<i>`: backend i's pin folder (every backend's interface is
    /// called eth0, so each needs its own).
    root: PathBuf,
    /// The backends' namespaces, for the detach on drop.
    backends: Vec<PathBuf>,
    attached: bool,
    /// Removes the pins if this process dies without unwinding.
    _reaper: Reaper,
}

impl Decap {
    pub fn new(topo: &Topology, bin: &Path) -> Result<Self, String> {
        let root = Path::new("/sys/fs/bpf").join(format!("{}-decap", topo.id));
        let reaper = Reaper::spawn(&topo.id, &[&root])?;
        Ok(Self {
            bin: bin.to_owned(),
            root,
            backends: topo.backends.iter().map(|b| b.path()).collect(),
            attached: false,
            _reaper: reaper,
        })
    }

    /// `stickylb decap <args> --pin-dir <backend i's>` in backend i's
    /// namespace: its stdout, or why it failed.
    fn run(&self, i: usize, args: &[&str]) -> Result<String, String> {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", self.backends[i].display()))
            .arg("--")
            .arg(&self.bin)
            .arg("decap")
            .args(args)
            .arg("--pin-dir")
            .arg(self.root.join(format!("b{i}")))
            .output()
            .map_err(|e| format!("run stickylb decap: {e}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            Ok(stdout)
        } else {
            Err(format!(
                "stickylb decap {} on backend {i} failed ({}): {stdout}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    pub fn attach(&mut self, topo: &Topology) -> Result<(), String> {
        let (lb, port) = (LB_ADDR.to_string(), GUE_PORT.to_string());
        for i in 0..topo.backends.len() {
            let own = backend_addr(i).to_string();
            self.run(
                i,
                &[
                    "attach",
                    "--interface",
                    "eth0",
                    "--allow",
                    &lb,
                    "--address",
                    &own,
                    "--gue-port",
                    &port,
                    "--xdp-mode",
                    "driver",
                ],
            )?;
            self.attached = true;
        }
        Ok(())
    }

    /// Detaches from every backend and checks that no XDP program is left.
    pub fn detach(&mut self, topo: &Topology) -> Result<(), String> {
        for (i, b) in topo.backends.iter().enumerate() {
            self.run(i, &["detach", "--interface", "eth0"])?;
            let link = b.ip(&["link", "show", "eth0"])?;
            if link.contains("xdp") {
                return Err(format!(
                    "backend {i}: XDP still attached after detach: {link}"
                ));
            }
        }
        self.attached = false;
        Ok(())
    }

    /// Program ids of the decap programs attached now (from their pinned
    /// links: no process holds them), for their run time.
    pub fn programs(&self) -> Result<Vec<u32>, String> {
        (0..self.backends.len())
            .map(|i| {
                let link = self
                    .root
                    .join(format!("b{i}"))
                    .join("eth0")
                    .join(lb_user::decap::LINK_PIN_NAME);
                lb_user::dataplane::Dataplane::pinned_link_info(&link)
                    .map(|(prog, _)| prog)
                    .map_err(|e| format!("read backend {i}'s decap link {}: {e}", link.display()))
            })
            .collect()
    }

    /// The counters of every backend's decap program, summed.
    pub fn counts(&self, topo: &Topology) -> Result<Counts, String> {
        let mut c = Counts::default();
        for i in 0..topo.backends.len() {
            let out = self.run(i, &["status", "--interface", "eth0", "--json"])?;
            let v: serde_json::Value = serde_json::from_str(&out)
                .map_err(|e| format!("backend {i}: decap status --json: {e}: {out}"))?;
            let counters = &v["interfaces"][0]["counters"];
            let get = |name: &str| {
                counters[name]
                    .as_u64()
                    .ok_or_else(|| format!("backend {i}: no counter {name} in decap status: {out}"))
            };
            c.ipip += get("decap_ipip")?;
            c.gue += get("decap_gue")?;
            c.rejected += get("reject_source")? + get("reject_dest")? + get("reject_malformed")?;
        }
        Ok(c)
    }
}

impl Drop for Decap {
    fn drop(&mut self) {
        if self.attached {
            for i in 0..self.backends.len() {
                let _ = self.run(i, &["detach", "--interface", "eth0"]);
            }
        }
        let _ = fs::remove_dir_all(&self.root);
    }
}

/// The tunnel settings of the daemon's `[tunnel]`.
fn settings() -> TunnelSettings {
    TunnelSettings {
        src_addr: LB_ADDR.octets(),
        src_prefix: [0; 4],
        src_prefix_len: 0,
        ttl: DEFAULT_TUNNEL_TTL,
        gue_port: GUE_PORT.to_be_bytes(),
        _pad: [0; 4],
    }
}

/// Makes sure the program has the daemon's `[tunnel]` settings in its
/// pinned `SLB_TUNNEL` map: a daemon that writes them from `[tunnel]` has
/// (they must then be the configured ones); one that does not leaves the
/// map zero, and then they are written here, as that daemon would. Who
/// wrote them: "daemon" or "bench".
pub fn ensure_tunnel_settings(pin_dir: &Path) -> Result<&'static str, String> {
    let path = pin_dir.join(map_names::TUNNEL);
    let data = MapData::from_pin(&path)
        .map_err(|e| format!("open the pinned map {}: {e}", path.display()))?;
    let mut map: Array<MapData, TunnelSettings> = Array::try_from(Map::Array(data))
        .map_err(|e| format!("{}: not the tunnel settings array: {e}", path.display()))?;
    let now = map
        .get(&0, 0)
        .map_err(|e| format!("read {}: {e}", path.display()))?;
    let want = settings();
    if now.src_addr != [0; 4] {
        if (now.src_addr, now.gue_port, now.ttl) != (want.src_addr, want.gue_port, want.ttl) {
            return Err(format!(
                "the daemon's tunnel settings {now:?} are not its [tunnel] ({want:?})"
            ));
        }
        return Ok("daemon");
    }
    map.set(0, want, 0)
        .map_err(|e| format!("write {}: {e}", path.display()))?;
    Ok("bench")
}
