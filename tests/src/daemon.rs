//! The stickylb daemon as a test runs it: a real process in the load
//! balancer's namespace, killed and its pinned state removed on drop.
//!
//! SIGTERM (`stop`) ends the daemon and leaves the program forwarding with
//! its state pinned, as it does for an operator; `unload` takes the data
//! path down. A `PinGuard` removes whatever a test leaves pinned.

use std::{
    fs,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Duration,
};

use lb_user::{
    api::{BackendState, StatusReply, VipStatus},
    control::{self, Request},
    dataplane::{Dataplane, LINK_PIN_NAME},
    runtime::{RECORD_DIR, Record},
};

use crate::netns::{ChildGuard, Netns, Result, Topology, TopologyOptions, wait_for};

/// Removes a pin folder (detaching its XDP link) on drop, so a test that
/// fails with the daemon killed leaves nothing pinned; and the runtime
/// record a daemon killed on it left.
pub struct PinGuard(pub PathBuf);

impl Drop for PinGuard {
    fn drop(&mut self) {
        let _ = Dataplane::detach_pinned(&self.0.join(LINK_PIN_NAME));
        let _ = fs::remove_dir_all(&self.0);
        let _ = fs::remove_file(Record::path_in(Path::new(RECORD_DIR), &self.0));
    }
}

/// A topology of `backends` backends and `clients` clients (no Redis), and
/// the guard of its daemon's pin folder. Bind both as `let (topo, pin)`: the
/// pins then go before the topology.
pub fn topology_with_pin(
    backends: usize,
    clients: usize,
    server_bin: &Path,
) -> Result<(Topology, PinGuard)> {
    let topo = Topology::up(
        &TopologyOptions {
            backends,
            clients,
            redis: None,
        },
        server_bin,
    )?;
    let pin = PinGuard(topo.daemon_pin());
    Ok((topo, pin))
}

/// `config` with `affinity_capacity` set to `capacity` (in place of the
/// 65536 of `Topology::config`).
pub fn with_affinity_capacity(config: &str, capacity: u32) -> String {
    let config = config.replace(
        "affinity_capacity = 65536",
        &format!("affinity_capacity = {capacity}"),
    );
    assert!(config.contains(&format!("affinity_capacity = {capacity}")));
    config
}

/// Exit code, stdout and stderr of a CLI run.
fn cli_outcome(out: Output) -> (i32, String, String) {
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub struct Daemon {
    pub child: Option<ChildGuard>,
    pub bin: PathBuf,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
    /// `RLIMIT_NOFILE` (soft and hard) the daemon is started with; `None`:
    /// this process's.
    pub nofile: Option<u64>,
    runs: u32,
}

impl Daemon {
    /// Writes `config_text` and starts `stickylb run` in the LB namespace;
    /// returns once the control socket answers.
    pub fn start(topo: &Topology, bin: &Path, config_text: &str, args: &[&str]) -> Result<Self> {
        Self::start_limited(topo, bin, config_text, args, None)
    }

    /// `start`, with soft and hard `RLIMIT_NOFILE` set to `nofile`: a
    /// daemon that cannot raise its descriptor limit.
    pub fn start_limited(
        topo: &Topology,
        bin: &Path,
        config_text: &str,
        args: &[&str],
        nofile: Option<u64>,
    ) -> Result<Self> {
        let mut d = Self::write_config(&topo.tmp, topo.control_socket(), bin, config_text)?;
        d.nofile = nofile;
        d.restart(topo, args)?;
        Ok(d)
    }

    /// `start` in namespace `ns`, with the config and log in `dir` (one of
    /// several daemons of a `Cluster`); `config_text` names the control
    /// socket `socket`.
    pub fn start_in(
        ns: &Netns,
        dir: &Path,
        socket: PathBuf,
        bin: &Path,
        config_text: &str,
        args: &[&str],
    ) -> Result<Self> {
        let mut d = Self::write_config(dir, socket, bin, config_text)?;
        d.restart_in(ns, args)?;
        Ok(d)
    }

    fn write_config(dir: &Path, socket: PathBuf, bin: &Path, config_text: &str) -> Result<Self> {
        let config = dir.join("stickylb.toml");
        fs::write(&config, config_text).map_err(|e| e.to_string())?;
        Ok(Self {
            child: None,
            bin: bin.to_owned(),
            config,
            socket,
            log: dir.join("daemon.log"),
            nofile: None,
            runs: 0,
        })
    }

    /// Starts the daemon again (after `kill9` or `stop`).
    pub fn restart(&mut self, topo: &Topology, args: &[&str]) -> Result<()> {
        self.restart_in(&topo.lb, args)
    }

    /// `restart` in namespace `ns`.
    pub fn restart_in(&mut self, ns: &Netns, args: &[&str]) -> Result<()> {
        self.runs += 1;
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| e.to_string())?;
        let mut cmd = ns.command(&self.bin);
        if let Some(n) = self.nofile {
            let limit = libc::rlimit {
                rlim_cur: n,
                rlim_max: n,
            };
            // SAFETY: setrlimit is async-signal-safe and touches nothing but
            // the child's own limits; nsenter passes them on to the daemon.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let child = cmd
            .arg("run")
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| e.to_string())?;
        self.child = Some(ChildGuard(child));
        let sock = self.socket.clone();
        let mut exited = None;
        let ok = wait_for(Duration::from_secs(10), || {
            exited = self.child.as_mut().and_then(ChildGuard::exited);
            exited.is_some() || control::call(&sock, &Request::Status).is_ok()
        });
        if let Some(status) = exited {
            self.child = None;
            return Err(format!(
                "daemon exited ({status}); log:\n{}",
                self.log_text()
            ));
        }
        if !ok {
            return Err(format!("daemon did not come up; log:\n{}", self.log_text()));
        }
        Ok(())
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn call(&self, req: &Request) -> Result<serde_json::Value> {
        control::call(&self.socket, req).map_err(|e| format!("{e:#}"))
    }

    pub fn status(&self) -> Result<StatusReply> {
        let v = self.call(&Request::Status)?;
        serde_json::from_value(v).map_err(|e| e.to_string())
    }

    pub fn vips(&self) -> Result<Vec<VipStatus>> {
        Ok(self.status()?.vips)
    }

    /// Waits until `pred(state, index in its VIP)` holds for every backend
    /// of every VIP.
    pub fn wait_backends(
        &self,
        timeout: Duration,
        pred: impl Fn(BackendState, usize) -> bool,
    ) -> bool {
        wait_for(timeout, || {
            self.vips().is_ok_and(|vips| {
                vips.iter()
                    .flat_map(|v| v.backends.iter().enumerate())
                    .all(|(i, b)| pred(b.state, i))
            })
        })
    }

    /// Panics, with the VIPs and the log, unless every backend is up within
    /// `timeout`.
    #[track_caller]
    pub fn assert_up(&self, timeout: Duration) {
        assert!(
            self.wait_backends(timeout, |s, _| s == BackendState::Up),
            "backends up: {:?}\n{}",
            self.vips(),
            self.log_text()
        );
    }

    /// The CLI, run as a user would: `stickylb --socket S <args>`.
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(&self.bin)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run the CLI");
        cli_outcome(out)
    }

    /// SIGKILL: the daemon dies without cleaning anything up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.0.kill();
            let _ = c.0.wait();
        }
    }

    /// The running daemon's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(ChildGuard::pid)
    }

    /// SIGTERM and wait for a clean exit (the program keeps forwarding, the
    /// state stays pinned).
    pub fn stop(&mut self) -> Result<()> {
        if let Some(c) = &self.child {
            c.signal(libc::SIGTERM);
        }
        self.wait_exit("SIGTERM")
    }

    /// Waits for the daemon to exit by itself (after `stickylb stop` or
    /// `unload`, or a signal) and checks it exited cleanly.
    pub fn wait_exit(&mut self, after: &str) -> Result<()> {
        let Some(mut c) = self.child.take() else {
            return Ok(());
        };
        if !wait_for(Duration::from_secs(10), || c.exited().is_some()) {
            return Err(format!("daemon did not exit after {after}"));
        }
        match c.exited() {
            Some(s) if s.success() => Ok(()),
            other => Err(format!(
                "daemon exited with {other:?} after {after}; log:\n{}",
                self.log_text()
            )),
        }
    }

    /// The CLI as an operator runs it, finding the daemon through the
    /// config file (`stickylb -c FILE <args>`, no --socket), in the LB
    /// namespace (so interface names resolve as the daemon sees them).
    pub fn cli_by_config(&self, topo: &Topology, args: &[&str]) -> (i32, String, String) {
        let out = topo
            .lb
            .command(&self.bin)
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run the CLI");
        cli_outcome(out)
    }

    /// `stickylb unload -c FILE`: stops the daemon if it runs, detaches the
    /// program and removes the pins; what it printed.
    pub fn unload(&mut self, topo: &Topology) -> Result<String> {
        let (code, out, err) = self.cli_by_config(topo, &["unload"]);
        if code != 0 {
            return Err(format!(
                "stickylb unload failed ({code}): {out}{err}\nlog:\n{}",
                self.log_text()
            ));
        }
        self.wait_exit("stickylb unload")?;
        Ok(out)
    }
}
