//! A real systemd to run stickylb's unit under: a Debian root (debootstrap,
//! built once per machine and cached), booted with `systemd-nspawn` in a
//! network namespace of the test's, on a throwaway overlay so that tests
//! never see each other's state.
//!
//! systemd is not PID 1 on the machines the tests run on, so `systemctl
//! start` cannot run there; in the container it is PID 1 of its own PID
//! namespace and runs units as on a real host. The container shares the
//! host's user namespace (no `--private-users`), so its capabilities are
//! real ones: it can load and attach XDP programs in the namespace it
//! joins. It gets a bpffs of its own at /sys/fs/bpf, mounted by the test
//! and unmounted on drop, which drops whatever is pinned there.
//!
//! Everything is owned by [`Container`]: dropping it (also when a test
//! panics) kills the container (SIGKILL to its init ends every process in
//! its PID namespace), unmounts the overlay and the bpffs and removes the
//! scratch folder.

use std::{
    fs,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use crate::netns::{ChildGuard, Result, sh, wait_for};

/// Where the Debian root is cached, once per machine.
pub const CACHE_DIR: &str = "/var/cache/stickylb-tests";
/// The cached root, under `CACHE_DIR`.
const ROOT_NAME: &str = "bookworm-systemd";
/// What the root is built from; written into the marker, so a change here
/// rebuilds it.
const SUITE: &str = "bookworm";
const MIRROR: &str = "http://deb.debian.org/debian";
const PACKAGES: &str = "systemd,systemd-sysv,dbus,iproute2";
/// Written last into a complete root: a root without it (an interrupted
/// build) is removed and built again.
const MARKER: &str = ".stickylb-tests-root";

/// Where each container gets a cgroup of its own, in the host's cgroup
/// hierarchies that systemd tracks processes with (here cgroup v1 with the
/// unified hierarchy beside it: "hybrid"). nspawn without a systemd on the
/// host splits the cgroup it runs in into `payload` (the container's root)
/// and `supervisor` (itself): containers started from one cgroup would share
/// `payload`, and so their services' cgroups (one's `systemctl stop` would
/// signal another's daemon, a start could fail with 219/CGROUP).
const CGROUP_ROOTS: [&str; 2] = [
    "/sys/fs/cgroup/unified/stickylb-tests",
    "/sys/fs/cgroup/systemd/stickylb-tests",
];

/// How long a boot may take to reach `running` (about 10 s here).
const BOOT_TIMEOUT: Duration = Duration::from_secs(40);

static SEQ: AtomicU32 = AtomicU32::new(0);

/// What the marker of a complete root says.
fn marker_text() -> String {
    format!("debootstrap --variant=minbase --include={PACKAGES} {SUITE} {MIRROR}\n")
}

/// Holds an exclusive flock(2) on a file while alive (tests of one binary
/// run in parallel, and so may other test binaries).
struct FileLock(#[expect(dead_code, reason = "held for its lock, never read")] fs::File);

impl FileLock {
    fn acquire(path: &Path) -> Result<Self> {
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| format!("open {}: {e}", path.display()))?;
        // SAFETY: flock(2) on an open descriptor.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(format!(
                "flock {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            ));
        }
        Ok(Self(f))
    }
}

/// Whether `root` is a complete root of the current recipe.
fn root_is_complete(root: &Path) -> bool {
    fs::read_to_string(root.join(MARKER)).is_ok_and(|m| m == marker_text())
        && [
            "usr/lib/systemd/systemd",
            "usr/bin/systemctl",
            "usr/sbin/ip",
        ]
        .iter()
        .all(|p| root.join(p).exists())
}

/// The cached Debian root with systemd, built with debootstrap if it is
/// missing or incomplete (about 70 s and 250 MB; needs the network once).
pub fn cached_root() -> Result<PathBuf> {
    crate::require_root();
    let cache = Path::new(CACHE_DIR);
    fs::create_dir_all(cache).map_err(|e| format!("create {CACHE_DIR}: {e}"))?;
    let _lock = FileLock::acquire(&cache.join(".lock"))?;
    let root = cache.join(ROOT_NAME);
    if root_is_complete(&root) {
        return Ok(root);
    }
    let partial = cache.join(format!("{ROOT_NAME}.partial"));
    for stale in [&root, &partial] {
        if stale.exists() {
            fs::remove_dir_all(stale).map_err(|e| format!("remove {}: {e}", stale.display()))?;
        }
    }
    let t = Instant::now();
    eprintln!(
        "building the container root {} (once per machine)",
        root.display()
    );
    sh(Command::new("debootstrap")
        .arg("--variant=minbase")
        .arg(format!("--include={PACKAGES}"))
        .arg(SUITE)
        .arg(&partial)
        .arg(MIRROR))
    .map_err(|e| format!("debootstrap (Debian package debootstrap, and the network): {e}"))?;
    fs::write(partial.join(MARKER), marker_text()).map_err(|e| e.to_string())?;
    fs::rename(&partial, &root).map_err(|e| e.to_string())?;
    eprintln!("built {} in {} s", root.display(), t.elapsed().as_secs());
    Ok(root)
}

/// How to boot a container.
pub struct ContainerOptions {
    /// The network namespace it joins (`/run/netns/NAME`).
    pub netns: PathBuf,
    /// Capabilities its init gets beyond systemd-nspawn's default set.
    pub capabilities: Vec<String>,
    /// System calls to allow beyond systemd-nspawn's own filter.
    pub system_calls: Vec<String>,
    /// Whether to give it a bpffs of its own at /sys/fs/bpf.
    pub bpffs: bool,
}

impl ContainerOptions {
    /// What a host's PID 1 has and nspawn does not give by default, for
    /// stickylb: BPF, network administration, perf monitoring (the
    /// verifier's pointer checks). (CAP_SYS_RESOURCE, with which a host's
    /// systemd raises its own descriptor limit at boot, is not in the
    /// bounding set of the machines the tests run on: nspawn cannot pass it
    /// on, so the container's services get at most the descriptor limit the
    /// test was started with.)
    pub fn for_stickylb(netns: PathBuf) -> Self {
        Self {
            netns,
            capabilities: ["CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"]
                .map(String::from)
                .to_vec(),
            // nspawn's filter refuses bpf(2) (EPERM) to the container's
            // services, whatever their capabilities; processes entered with
            // nsenter do not have the filter, so only a unit shows it.
            system_calls: vec!["bpf".into()],
            bpffs: true,
        }
    }
}

/// A booted container; killed and removed on drop.
pub struct Container {
    pub name: String,
    /// The container's root as the host sees it (the overlay's merged view).
    pub root: PathBuf,
    /// The scratch folder: overlay layers, the bpffs mount, the console log.
    pub dir: PathBuf,
    nspawn: Option<ChildGuard>,
    init: Option<u32>,
    /// The container's own cgroups (`CGROUP_ROOTS`/name), removed on drop.
    cgroups: Vec<PathBuf>,
    /// Mount points to unmount on drop, last first.
    mounts: Vec<PathBuf>,
}

impl Container {
    /// An overlay of the cached root for one container, not booted yet:
    /// install what the test needs into `root`, then `boot`.
    pub fn prepare() -> Result<Self> {
        let lower = cached_root()?;
        remove_stale();
        let name = format!(
            "sd-{}x{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(&name);
        let _ = fs::remove_dir_all(&dir);
        for d in ["upper", "work", "root", "bpf"] {
            fs::create_dir_all(dir.join(d)).map_err(|e| e.to_string())?;
        }
        fs::write(dir.join(OWNER), std::process::id().to_string()).map_err(|e| e.to_string())?;
        let mut c = Self {
            name,
            root: dir.join("root"),
            dir,
            nspawn: None,
            init: None,
            cgroups: Vec::new(),
            mounts: Vec::new(),
        };
        sh(Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o"])
            .arg(format!(
                "lowerdir={},upperdir={},workdir={}",
                lower.display(),
                c.dir.join("upper").display(),
                c.dir.join("work").display()
            ))
            .arg(&c.root))?;
        c.mounts.push(c.root.clone());
        Ok(c)
    }

    /// Boots systemd in the container; returns once `systemctl
    /// is-system-running` says `running` (or `degraded`, listing the failed
    /// units).
    pub fn boot(&mut self, opts: &ContainerOptions) -> Result<()> {
        let mut cmd = Command::new("systemd-nspawn");
        cmd.args(["-q", "-D"])
            .arg(&self.root)
            // No systemd on the host to register with or to make a scope.
            .args(["--register=no", "--keep-unit"])
            .arg(format!("--network-namespace-path={}", opts.netns.display()))
            .args(["-M", &self.name]);
        if !opts.capabilities.is_empty() {
            cmd.arg(format!("--capability={}", opts.capabilities.join(",")));
        }
        if !opts.system_calls.is_empty() {
            cmd.arg(format!(
                "--system-call-filter={}",
                opts.system_calls.join(" ")
            ));
        }
        if opts.bpffs {
            let bpf = self.dir.join("bpf");
            sh(Command::new("mount").args(["-t", "bpf", "bpf"]).arg(&bpf))?;
            self.mounts.push(bpf.clone());
            cmd.arg(format!("--bind={}:/sys/fs/bpf", bpf.display()));
        }
        let mut procs = Vec::new();
        for root in CGROUP_ROOTS {
            let hierarchy = Path::new(root).parent().expect("a folder");
            if !hierarchy.join("cgroup.procs").exists() {
                continue;
            }
            let cgroup = Path::new(root).join(&self.name);
            fs::create_dir_all(&cgroup)
                .map_err(|e| format!("create the container's cgroup {}: {e}", cgroup.display()))?;
            self.cgroups.push(cgroup.clone());
            procs.push(
                std::ffi::CString::new(
                    cgroup
                        .join("cgroup.procs")
                        .into_os_string()
                        .into_encoded_bytes(),
                )
                .map_err(|e| e.to_string())?,
            );
        }
        // SAFETY: only open(2), write(2) and close(2) between fork and exec,
        // on paths prepared before the fork.
        unsafe {
            use std::os::unix::process::CommandExt as _;
            cmd.pre_exec(move || {
                for path in &procs {
                    let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    // "0": the writing process itself.
                    let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                    libc::close(fd);
                    if n != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let console = fs::File::create(self.dir.join("console.log")).map_err(|e| e.to_string())?;
        let child = cmd
            .arg("-b")
            .stdin(Stdio::null())
            .stdout(console.try_clone().map_err(|e| e.to_string())?)
            .stderr(console)
            .spawn()
            .map_err(|e| format!("systemd-nspawn (Debian package systemd-container): {e}"))?;
        let nspawn = ChildGuard(child);
        let nspawn_pid = nspawn.pid();
        self.nspawn = Some(nspawn);
        // The container's init is the child of systemd-nspawn that is PID 1
        // of its own PID namespace (nspawn's first child sets the container
        // up, starts the init and exits: it must not be taken for it).
        let mut init = None;
        wait_for(Duration::from_secs(10), || {
            init = children_of(nspawn_pid)
                .into_iter()
                .find(|&p| is_pid_namespace_init(p));
            init.is_some()
        });
        self.init = Some(init.ok_or_else(|| {
            format!(
                "systemd-nspawn started no init; console:\n{}",
                self.console()
            )
        })?);
        let t = Instant::now();
        let mut state = String::new();
        let up = wait_for(BOOT_TIMEOUT, || {
            // `--wait` blocks until the boot has finished, one way or another.
            let out = self.run("systemctl is-system-running --wait");
            state = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            state == "running" || state == "degraded"
        });
        if !up {
            return Err(format!(
                "the container did not boot within {} s (state {state:?}); console:\n{}",
                BOOT_TIMEOUT.as_secs(),
                self.console()
            ));
        }
        if state == "degraded" {
            eprintln!(
                "container {} booted degraded: {}",
                self.name,
                self.sh("systemctl --failed --no-legend")
                    .unwrap_or_default()
            );
        }
        eprintln!(
            "container {} booted in {} ms",
            self.name,
            t.elapsed().as_millis()
        );
        Ok(())
    }

    /// What the container printed on its console.
    pub fn console(&self) -> String {
        fs::read_to_string(self.dir.join("console.log")).unwrap_or_default()
    }

    /// The container's init, as the host sees it.
    pub fn init_pid(&self) -> Option<u32> {
        self.init
    }

    /// A command run inside the container (every namespace of its init,
    /// its root), with a clean environment.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg("-t")
            .arg(self.init.unwrap_or(0).to_string())
            .args(["-a", "--", "/usr/bin/env", "-i"])
            .args([
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "SYSTEMD_PAGER=",
                "SYSTEMD_COLORS=0",
                "TERM=dumb",
                "LANG=C.UTF-8",
            ])
            .arg(program);
        c
    }

    /// Runs `script` with `sh -e` in the container: its output, whatever it
    /// exits with.
    pub fn run(&self, script: &str) -> Output {
        self.command("/bin/sh")
            .args(["-e", "-c", script])
            .stdin(Stdio::null())
            .output()
            .expect("run nsenter")
    }

    /// `run`, failing unless `script` succeeds: its stdout.
    pub fn sh(&self, script: &str) -> Result<String> {
        let out = self.run(script);
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "in container {}: `{script}` failed ({}):\n{}{}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// A path inside the container, as the host sees it.
    pub fn path(&self, inside: &str) -> PathBuf {
        self.root.join(inside.trim_start_matches('/'))
    }
}

/// In a container's scratch folder: the pid of the test process that made
/// it, and of the container's init.
const OWNER: &str = "owner.pid";
const INIT: &str = "init.pid";

/// Removes what containers of test processes that died without dropping
/// them (SIGKILL, a harness's timeout) left: kills their init, unmounts
/// their overlay and bpffs, removes their scratch folder. Only folders with
/// an owner file whose process is gone are touched.
fn remove_stale() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let dir = e.path();
        let named = e.file_name().to_str().is_some_and(|n| n.starts_with("sd-"));
        let Some(owner) = named
            .then(|| fs::read_to_string(dir.join(OWNER)).ok())
            .flatten()
            .and_then(|p| p.trim().parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{owner}")).exists() {
            continue;
        }
        if let Some(init) = fs::read_to_string(dir.join(INIT))
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
            .filter(|&p| is_pid_namespace_init(p))
        {
            // SAFETY: kill(2) on the init of a container a dead test booted.
            unsafe { libc::kill(init as i32, libc::SIGKILL) };
            wait_for(Duration::from_secs(5), || {
                !Path::new(&format!("/proc/{init}")).exists()
            });
        }
        for m in ["bpf", "root"] {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(dir.join(m))
                .stderr(Stdio::null())
                .status();
        }
        eprintln!(
            "removed the container {} of a test that died",
            dir.display()
        );
        let _ = fs::remove_dir_all(&dir);
    }
}

/// Whether `pid` is PID 1 of a PID namespace below this one.
fn is_pid_namespace_init(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("NSpid:"))
            .is_some_and(|ids| {
                let ids: Vec<&str> = ids.split_whitespace().collect();
                ids.len() == 2 && ids[1] == "1"
            })
    })
}

/// The pids of `pid`'s children.
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

impl Drop for Container {
    fn drop(&mut self) {
        // SIGKILL to a PID namespace's init kills every process in it: no
        // orderly shutdown to wait for, nothing left running.
        if let Some(init) = self.init.take() {
            // SAFETY: kill(2) on the init of a container this guard booted.
            unsafe { libc::kill(init as i32, libc::SIGKILL) };
        }
        if let Some(mut n) = self.nspawn.take() {
            if !wait_for(Duration::from_secs(5), || n.exited().is_some()) {
                eprintln!("systemd-nspawn of {} did not exit: killing it", self.name);
            }
            drop(n);
        }
        for m in self.mounts.drain(..).rev() {
            let umount = |lazy: bool| {
                let mut c = Command::new("umount");
                if lazy {
                    c.arg("-l");
                }
                c.arg(&m)
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            };
            if !umount(false) {
                let _ = umount(true);
            }
        }
        for cg in self.cgroups.drain(..) {
            remove_cgroup(&cg);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Removes the cgroup `dir` and those below it, deepest first (a cgroup is
/// removed by rmdir(2) once it has no process and no child).
fn remove_cgroup(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup(&e.path());
            }
        }
    }
    let _ = fs::remove_dir(dir);
}

/// What [`install`] puts into a container, as the Debian package lays it out.
pub struct Install<'a> {
    /// The stickylb binary: /usr/bin/stickylb.
    pub binary: &'a Path,
    /// The unit: /lib/systemd/system/stickylb.service.
    pub unit: &'a Path,
    /// The config: /etc/stickylb/stickylb.toml.
    pub config: &'a str,
}

/// Installs stickylb into the root at `root` as the package does, without
/// starting or enabling the service. The one step to switch to `dpkg -i`.
pub fn install(root: &Path, what: &Install) -> Result<()> {
    let put = |inside: &str, from: &Path, mode: u32| -> Result<()> {
        use std::os::unix::fs::PermissionsExt as _;
        let to = root.join(inside);
        fs::create_dir_all(to.parent().expect("a path in a folder")).map_err(|e| e.to_string())?;
        fs::copy(from, &to)
            .map_err(|e| format!("copy {} to {}: {e}", from.display(), to.display()))?;
        fs::set_permissions(&to, fs::Permissions::from_mode(mode)).map_err(|e| e.to_string())
    };
    put("usr/bin/stickylb", what.binary, 0o755)?;
    put("lib/systemd/system/stickylb.service", what.unit, 0o644)?;
    let etc = root.join("etc/stickylb");
    fs::create_dir_all(&etc).map_err(|e| e.to_string())?;
    fs::write(etc.join("stickylb.toml"), what.config).map_err(|e| e.to_string())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_root_is_complete_only_with_the_current_marker_and_its_programs() {
        let root = std::env::temp_dir().join(format!("sd-root-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        for p in [
            "usr/lib/systemd/systemd",
            "usr/bin/systemctl",
            "usr/sbin/ip",
        ] {
            let p = root.join(p);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, "").unwrap();
        }
        assert!(!root_is_complete(&root), "no marker: an interrupted build");
        fs::write(root.join(MARKER), "debootstrap of another recipe\n").unwrap();
        assert!(!root_is_complete(&root), "a marker of another recipe");
        fs::write(root.join(MARKER), marker_text()).unwrap();
        assert!(root_is_complete(&root));
        fs::remove_file(root.join("usr/bin/systemctl")).unwrap();
        assert!(!root_is_complete(&root), "a root missing systemctl");
        fs::remove_dir_all(&root).unwrap();
    }
}
