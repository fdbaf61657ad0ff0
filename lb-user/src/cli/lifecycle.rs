//! `stickylb stop` and `stickylb unload`, and finding the running daemon
//! whatever state its config file is in.

use std::{
    io::Write,
    os::unix::{fs::FileTypeExt as _, net::UnixStream},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{Cli, file_field, socket};
use crate::{
    api::{StatusReply, WithdrawReply},
    config::{Config, DEFAULT_PIN_PATH},
    control::{self, Request},
    daemon::unpin_all,
    netdev,
    runtime::{self, PinLock, Record},
};

/// How long a stopping daemon may take to exit.
const EXIT_WAIT: Duration = Duration::from_secs(10);

/// The runtime record of the running daemon `cli` means: the one started
/// with `-c FILE`, or without `-c` the only one running.
pub(super) fn running_daemon_record(cli: &Cli) -> Option<Record> {
    let dir = Path::new(runtime::RECORD_DIR);
    match &cli.config {
        Some(c) => Record::find_by_config(dir, c),
        None => {
            let mut live = Record::live_in(dir);
            (live.len() == 1).then(|| live.remove(0))
        }
    }
}

/// A running daemon, as found.
#[derive(Debug)]
struct Running {
    pid: u32,
    pin_path: PathBuf,
    interface: String,
    /// Its control socket, when known (a daemon found by its pin lock
    /// alone, having written no record, has none to say).
    socket: Option<PathBuf>,
    /// Its config file, when known (from its record, or `-c`).
    config: Option<PathBuf>,
}

/// The running daemon `cli` means, or why none answers.
fn find_running(cli: &Cli) -> Result<Running, anyhow::Error> {
    if cli.socket.is_none()
        && let Some(r) = running_daemon_record(cli)
    {
        return Ok(Running {
            pid: r.pid,
            pin_path: r.pin_path,
            interface: r.interface,
            socket: Some(r.control_socket),
            config: Some(r.config),
        });
    }
    let socket = socket(cli)?;
    let status: StatusReply = serde_json::from_value(control::call(&socket, &Request::Status)?)
        .context("the daemon's status reply")?;
    if let Some(c) = &cli.config {
        check_same_daemon(c, &socket, &status)?;
    }
    Ok(Running {
        pid: status.pid,
        pin_path: status.pin_path,
        interface: status.interface,
        socket: Some(socket),
        config: cli.config.clone(),
    })
}

/// The daemon answering on `socket` must be the one `-c config` means (it
/// reads that file, and uses its pin_path) before it is stopped: the file's
/// control_socket may now name another daemon's socket.
fn check_same_daemon(config: &Path, socket: &Path, status: &StatusReply) -> anyhow::Result<()> {
    let want = runtime::config_key(config);
    if status.config != want {
        bail!(
            "the daemon answering on {} (pid {}) was started with {}, not {}: not stopping it. Give the right -c FILE, or --socket for the daemon you mean",
            socket.display(),
            status.pid,
            status.config.display(),
            config.display()
        );
    }
    if let Ok(pin) = file_field(config, "pin_path") {
        let pin = pin.unwrap_or_else(|| DEFAULT_PIN_PATH.into());
        if !same_path(&pin, &status.pin_path) {
            bail!(
                "the daemon answering on {} (pid {}) uses pin_path {}, but {} says {}: not stopping it. Give --socket for the daemon you mean",
                socket.display(),
                status.pid,
                status.pin_path.display(),
                config.display(),
                pin.display()
            );
        }
    }
    Ok(())
}

/// The daemon holding the lock on `pin_path`, found through that lock and
/// its record only (never through a socket, which may be another daemon's).
fn on_pin_path(pin_path: &Path) -> anyhow::Result<Option<Running>> {
    let Some(pid) = runtime::holder(pin_path) else {
        return Ok(None);
    };
    let Some(r) = Record::of_pin_path(Path::new(runtime::RECORD_DIR), pin_path) else {
        // A daemon whose record could not be written (it said so in its
        // log) is still the lock's holder: only stickylb takes that lock.
        return Ok(Some(Running {
            pid,
            pin_path: pin_path.to_owned(),
            interface: "its interface".to_owned(),
            socket: None,
            config: None,
        }));
    };
    if !same_path(&r.pin_path, pin_path) {
        bail!(
            "the daemon holding the lock on {} (pid {}) says its pin_path is {}: not stopping it",
            pin_path.display(),
            r.pid,
            r.pin_path.display()
        );
    }
    Ok(Some(Running {
        pid: r.pid,
        pin_path: pin_path.to_owned(),
        interface: r.interface,
        socket: Some(r.control_socket),
        config: Some(r.config),
    }))
}

/// The same file: by device and inode when both exist, else by name.
fn same_path(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => a == b,
    }
}

/// How `terminate` ended.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// Signalled, and it has exited.
    Stopped,
    /// It had exited already: nothing was signalled.
    Gone,
}

/// Sends SIGTERM and waits until the daemon has let go of its pin folder
/// (it has then exited: the kernel drops the lock as the process ends).
/// Only the holder of that lock is signalled: a pid from a socket's reply
/// may be anything (pid 1, from a socket someone else put there).
fn terminate(d: &Running) -> anyhow::Result<Ended> {
    // The folder as seen from here, or (a daemon pinning on a bpffs of
    // another mount namespace: this command run with `ip netns exec`, say)
    // through the daemon's own root.
    let lock = match runtime::lock_seen_at(d.pid, &d.pin_path) {
        Some(lock) => lock,
        None => match runtime::holder(&d.pin_path) {
            Some(p) => bail!(
                "pid {} is not the stickylb daemon on {} (pid {p} holds its lock): not signalling it. If the control socket is not that daemon's, give --socket or -c FILE",
                d.pid,
                d.pin_path.display()
            ),
            None if still_answers(d) => bail!(
                "the daemon answering on its control socket (pid {}) holds no lock on {} that \
                 this command can see: it runs in another PID or mount namespace. Nothing was \
                 signalled; run this command where the daemon runs",
                d.pid,
                d.pin_path.display()
            ),
            None => return Ok(Ended::Gone),
        },
    };
    // SAFETY: kill(2) has no memory-safety preconditions.
    if unsafe { libc::kill(d.pid as i32, libc::SIGTERM) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ESRCH) {
            // It exited between the lookup and the signal.
            return Ok(Ended::Gone);
        }
        bail!(
            "cannot signal the stickylb daemon (pid {}): {e}{}",
            d.pid,
            if e.raw_os_error() == Some(libc::EPERM) {
                "; run as root"
            } else {
                ""
            }
        );
    }
    let end = Instant::now() + EXIT_WAIT;
    while runtime::holder(&lock) == Some(d.pid) {
        if Instant::now() > end {
            bail!(
                "the stickylb daemon (pid {}) did not exit within {} s of SIGTERM; \
                 see its log, or end it with kill -9 {} (the program keeps forwarding)",
                d.pid,
                EXIT_WAIT.as_secs(),
                d.pid
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(Ended::Stopped)
}

/// `stickylb stop`: the daemon exits, the data path stays.
pub(super) fn stop(cli: &Cli, out: &mut dyn Write) -> anyhow::Result<()> {
    let d = find_running(cli).context("no daemon to stop")?;
    if terminate(&d)? == Ended::Gone {
        writeln!(
            out,
            "the daemon (pid {}) had already exited; nothing was signalled",
            d.pid
        )?;
        return Ok(());
    }
    writeln!(
        out,
        "stopped the daemon (pid {}); the XDP program keeps forwarding on {} with its state \
         pinned at {}: `stickylb run` adopts it (no client moves), `stickylb unload` takes it \
         down",
        d.pid,
        d.interface,
        d.pin_path.display()
    )?;
    Ok(())
}

/// `stickylb unload`: stops the daemon if one runs, then removes the data
/// path (taking the pin folder's lock, so no daemon can start on it
/// meanwhile), saying what it removed.
pub(super) fn unload(
    cli: &Cli,
    pin_path: Option<&Path>,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let found = match pin_path {
        // That pin path's daemon only: the socket the CLI would ask may be
        // another daemon's (the production one, when P is a stale folder).
        Some(p) => Ok(on_pin_path(p)?),
        None => find_running(cli).map(Some),
    };
    let running = match found {
        Ok(d) => d,
        // A daemon that answers nobody (gone, or never started): what it
        // left is still unloaded, from the pin path below.
        Err(e) if cli.socket.is_none() => {
            log_unreachable(&e);
            None
        }
        Err(e) => return Err(e),
    };
    let (pin_path, sockets) = match &running {
        Some(d) => {
            refuse_unseen_pins(d)?;
            let emptied = withdraw_first(d, out)?;
            match terminate(d)? {
                Ended::Stopped => writeln!(out, "stopped the daemon (pid {})", d.pid)?,
                Ended::Gone => writeln!(out, "the daemon (pid {}) had already exited", d.pid)?,
            }
            // Emptied behind the daemon's back: whatever it announced
            // again before it stopped goes too.
            if let Some(a) = emptied {
                let _ = crate::announce::withdraw_table(&a);
            }
            if let Some(s) = &d.socket
                && !s.exists()
            {
                writeln!(
                    out,
                    "the daemon removed its control socket {} on exit",
                    s.display()
                )?;
            }
            (
                d.pin_path.clone(),
                d.socket.iter().cloned().collect::<Vec<_>>(),
            )
        }
        None => {
            let from_file = |field| {
                cli.config
                    .as_deref()
                    .map(|c| file_field(c, field))
                    .transpose()
                    .map(Option::flatten)
            };
            let pin = match pin_path {
                Some(p) => p.to_owned(),
                None => from_file("pin_path")?.unwrap_or_else(|| DEFAULT_PIN_PATH.into()),
            };
            withdraw_left_routes(cli, out)?;
            // A file too broken to name its socket still has its pins
            // unloaded (with --pin-path).
            (pin, socket(cli).into_iter().collect::<Vec<_>>())
        }
    };
    if !pin_path.exists() {
        writeln!(
            out,
            "nothing pinned at {}: nothing to unload{}",
            pin_path.display(),
            if on_bpffs(&pin_path) {
                ""
            } else {
                " (but no bpffs is mounted there in this mount namespace, so pins elsewhere \
                 cannot be seen: under `ip netns exec`, which mounts a /sys of its own, run \
                 `nsenter --net=/run/netns/NAME stickylb unload` instead)"
            }
        )?;
        return remove_stale_sockets(&sockets, out);
    }
    let _lock = PinLock::acquire_within(&pin_path, EXIT_WAIT)?;
    let gone = unpin_all(&pin_path, false)?;
    let link = pin_path.join(crate::dataplane::LINK_PIN_NAME);
    match gone.detached_from {
        Some(0) => writeln!(
            out,
            "removed the XDP link pinned at {} (its interface had gone already)",
            link.display()
        )?,
        Some(ifindex) => writeln!(
            out,
            "detached the XDP program from {} (link pinned at {})",
            netdev::ifname(ifindex),
            link.display()
        )?,
        None => writeln!(out, "no XDP link was pinned at {}", link.display())?,
    }
    let maps: Vec<&str> = gone.maps.iter().map(String::as_str).collect();
    if !maps.is_empty() {
        writeln!(
            out,
            "unpinned {} maps (every affinity entry and counter is gone): {}",
            maps.len(),
            maps.join(", ")
        )?;
    }
    if gone.folder {
        writeln!(out, "removed the pin folder {}", pin_path.display())?;
    }
    let _ = std::fs::remove_file(Record::path_in(Path::new(runtime::RECORD_DIR), &pin_path));
    remove_stale_sockets(&sockets, out)?;
    if gone.detached_from.is_some() {
        writeln!(
            out,
            "the VIPs no longer forward: their clients lose service (frames to them reach this \
             host's own stack) until `stickylb run` starts again, re-pinning every client"
        )?;
    }
    Ok(())
}

/// Unloading a daemon whose pins this command cannot see would stop it and
/// leave its program attached: refused before anything changes.
fn refuse_unseen_pins(d: &Running) -> anyhow::Result<()> {
    match runtime::lock_seen_at(d.pid, &d.pin_path) {
        None if still_answers(d) => bail!(
            "the daemon answering on its control socket (pid {}) holds no lock on {} that this \
             command can see: it runs in another PID or mount namespace. Nothing was changed; \
             run `stickylb unload` where the daemon runs",
            d.pid,
            d.pin_path.display()
        ),
        Some(seen) if seen != d.pin_path => bail!(
            "the daemon (pid {pid}) pins its maps at {pin} on a bpffs that this command does \
             not see: it runs in another mount namespace (a command run with `ip netns exec` \
             gets a /sys of its own). Nothing was changed. Unload from where its pins are seen: \
             `nsenter --net=/run/netns/NAME stickylb unload` in place of `ip netns exec NAME \
             stickylb unload`, or `nsenter --target {pid} --mount --net stickylb unload`",
            pid = d.pid,
            pin = d.pin_path.display(),
        ),
        _ => Ok(()),
    }
}

/// Whether the daemon's control socket still answers, as a live daemon's
/// does: one whose lock cannot be seen is then not gone, only out of sight.
fn still_answers(d: &Running) -> bool {
    d.socket
        .as_deref()
        .is_some_and(|s| control::call(s, &Request::Status).is_ok())
}

/// Whether `path`, or the nearest folder above it that exists, is on a
/// bpffs.
fn on_bpffs(path: &Path) -> bool {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let Some(existing) = path.ancestors().find(|p| p.exists()) else {
        return false;
    };
    let Ok(c) = std::ffi::CString::new(existing.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: a NUL-terminated path and a statfs the call fills in.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0) && st.f_type as i64 == BPF_FS_MAGIC
}

/// Before the program goes: the daemon withdraws its VIPs, and the routers
/// get `withdraw_delay` to move traffic away while it is still forwarded.
/// A daemon that cannot be asked (no socket known, an older version, a
/// reply this CLI cannot read) has its `[announce]` table emptied from its
/// config file instead; when that fails too, nothing is stopped: its routes
/// would stay announced for a node that no longer forwards.
///
/// The `[announce]` emptied here, if it was.
fn withdraw_first(
    d: &Running,
    out: &mut dyn Write,
) -> anyhow::Result<Option<crate::config::AnnounceConfig>> {
    let asked = d
        .socket
        .as_deref()
        .ok_or_else(|| anyhow::anyhow!("no control socket is known"))
        .and_then(|socket| control::call(socket, &Request::Withdraw))
        .and_then(|result| {
            serde_json::from_value::<WithdrawReply>(result)
                .context("its reply to the withdraw request")
        });
    let reply = match asked {
        Ok(r) => r,
        Err(e) => return withdraw_for_unanswering(d, &e, out),
    };
    if reply.withdrawn.is_empty() {
        return Ok(None);
    }
    let list: Vec<String> = reply.withdrawn.iter().map(ToString::to_string).collect();
    let delay = Duration::from_millis(reply.withdraw_delay_ms);
    writeln!(
        out,
        "withdrew {}; waiting {} (withdraw_delay) for the routers to move traffic away",
        list.join(", "),
        crate::fmt::fmt_duration(delay)
    )?;
    std::thread::sleep(delay);
    Ok(None)
}

/// The daemon `d` did not withdraw its VIPs when asked (`why`): its config
/// file's `[announce]` table is emptied here, or the unload stops.
fn withdraw_for_unanswering(
    d: &Running,
    why: &anyhow::Error,
    out: &mut dyn Write,
) -> anyhow::Result<Option<crate::config::AnnounceConfig>> {
    let refuse = |what: String| {
        anyhow::anyhow!(
            "the daemon (pid {}) did not withdraw its VIPs ({why:#}) and {what}: not stopping \
             it, since its routes would stay announced for a node that no longer forwards. \
             Withdraw them first (`stickylb maintenance on`, or remove its routes from its \
             [announce] table), or pass `-c` with its config file",
            d.pid
        )
    };
    let Some(path) = &d.config else {
        super::to_stderr(&format!(
            "stickylb: the daemon (pid {}) did not withdraw its VIPs ({why:#}) and its config \
             file is not known: unloading without withdrawing any route",
            d.pid
        ));
        return Ok(None);
    };
    let cfg = Config::load(path)
        .map_err(|e| refuse(format!("its config {} does not load ({e})", path.display())))?;
    let Some(announce) = cfg.announce else {
        // It announces nothing.
        return Ok(None);
    };
    let routes = crate::announce::withdraw_table(&announce)
        .map_err(|e| refuse(format!("table {} cannot be emptied ({e})", announce.table)))?;
    if routes.is_empty() {
        return Ok(Some(announce));
    }
    let list: Vec<String> = routes.iter().map(|r| r.dst.to_string()).collect();
    writeln!(
        out,
        "the daemon did not withdraw its VIPs ({why:#}): withdrew {} from table {} of {}; \
         waiting {} (withdraw_delay)",
        list.join(", "),
        announce.table,
        path.display(),
        crate::fmt::fmt_duration(announce.withdraw_delay)
    )?;
    std::thread::sleep(announce.withdraw_delay);
    Ok(Some(announce))
}

/// With no daemon to ask: the routes a killed daemon left in `-c FILE`'s
/// `[announce]` table are withdrawn before its program goes.
fn withdraw_left_routes(cli: &Cli, out: &mut dyn Write) -> anyhow::Result<()> {
    let Some(announce) = cli
        .config
        .as_deref()
        .and_then(|c| Config::load(c).ok())
        .and_then(|c| c.announce)
    else {
        return Ok(());
    };
    let routes = match crate::announce::withdraw_table(&announce) {
        Ok(r) => r,
        Err(e) => {
            super::to_stderr(&format!(
                "stickylb: cannot withdraw the routes in table {} ({e}); unloading anyway",
                announce.table
            ));
            return Ok(());
        }
    };
    if routes.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = routes.iter().map(|r| r.dst.to_string()).collect();
    writeln!(
        out,
        "withdrew {} from table {}; waiting {} (withdraw_delay)",
        list.join(", "),
        announce.table,
        crate::fmt::fmt_duration(announce.withdraw_delay)
    )?;
    std::thread::sleep(announce.withdraw_delay);
    Ok(())
}

fn log_unreachable(e: &anyhow::Error) {
    // stderr, not `out`: it says why no daemon was stopped, and `out`
    // says what was removed.
    super::to_stderr(&format!(
        "stickylb: no running daemon found ({e:#}); unloading what is pinned"
    ));
}

/// Removes control sockets nobody answers on (a daemon killed with -9
/// leaves its socket behind); never a file that is not a socket.
fn remove_stale_sockets(sockets: &[PathBuf], out: &mut dyn Write) -> anyhow::Result<()> {
    for s in sockets {
        let is_socket = std::fs::symlink_metadata(s).is_ok_and(|m| m.file_type().is_socket());
        if is_socket && UnixStream::connect(s).is_err() {
            std::fs::remove_file(s).with_context(|| format!("remove {}", s.display()))?;
            writeln!(out, "removed the control socket {}", s.display())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory as _, Parser as _};

    use super::super::args::{Cli, Command};

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("stickylb").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn keep_is_still_accepted_but_no_longer_shown() {
        assert!(matches!(
            parse(&["run", "--keep"]).command,
            Command::Run { keep: true, .. }
        ));
        let mut cmd = Cli::command();
        let help = cmd
            .find_subcommand_mut("run")
            .unwrap()
            .render_long_help()
            .to_string();
        assert!(!help.contains("--keep"), "{help}");
        assert!(help.contains("--fresh"), "{help}");
    }

    #[test]
    fn maintenance_parses_on_and_off_only() {
        use crate::{api::Request, cli::args::Query};
        for (word, on) in [("on", true), ("off", false)] {
            match parse(&["maintenance", word]).command {
                Command::Query(q @ Query::Maintenance { .. }) => {
                    assert_eq!(q.request(), Request::Maintenance { on })
                }
                _ => panic!("not maintenance"),
            }
        }
        assert!(Cli::try_parse_from(["stickylb", "maintenance", "maybe"]).is_err());
        assert!(Cli::try_parse_from(["stickylb", "maintenance"]).is_err());
    }

    #[test]
    fn stop_and_unload_parse() {
        assert!(matches!(parse(&["stop"]).command, Command::Stop));
        match parse(&[
            "-c",
            "/etc/stickylb.toml",
            "unload",
            "--pin-path",
            "/sys/fs/bpf/x",
        ])
        .command
        {
            Command::Unload { pin_path } => {
                assert_eq!(
                    pin_path.as_deref(),
                    Some(std::path::Path::new("/sys/fs/bpf/x"))
                )
            }
            _ => panic!("not unload"),
        }
    }

    #[test]
    fn only_the_pin_locks_holder_is_signalled() {
        use super::{Ended, Running, terminate};
        let dir = std::env::temp_dir().join(format!("stickylb-term-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        // What a fake socket's status reply could name.
        let d = Running {
            pid: child.id(),
            pin_path: dir.clone(),
            interface: "eth0".into(),
            socket: None,
            config: None,
        };
        // Nobody holds the lock: nothing to signal.
        assert_eq!(terminate(&d).unwrap(), Ended::Gone);
        // Another process (this one) holds it: refused.
        let lock = crate::runtime::PinLock::acquire(&dir).unwrap();
        let e = terminate(&d).unwrap_err().to_string();
        assert!(e.contains("not signalling"), "{e}");
        drop(lock);
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(
            child.try_wait().unwrap().is_none(),
            "the pid named by the reply was signalled"
        );
        child.kill().unwrap();
        child.wait().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
