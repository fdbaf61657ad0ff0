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
    api::StatusReply,
    config::DEFAULT_PIN_PATH,
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
struct Running {
    pid: u32,
    pin_path: PathBuf,
    interface: String,
    socket: PathBuf,
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
            socket: r.control_socket,
        });
    }
    let socket = socket(cli)?;
    let status: StatusReply = serde_json::from_value(control::call(&socket, &Request::Status)?)
        .context("the daemon's status reply")?;
    Ok(Running {
        pid: status.pid,
        pin_path: status.pin_path,
        interface: status.interface,
        socket,
    })
}

/// Sends SIGTERM and waits until the daemon has let go of its pin folder
/// (it has then exited: the kernel drops the lock as the process ends).
fn terminate(d: &Running) -> anyhow::Result<()> {
    // SAFETY: kill(2) has no memory-safety preconditions.
    if unsafe { libc::kill(d.pid as i32, libc::SIGTERM) } != 0 {
        let e = std::io::Error::last_os_error();
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
    while runtime::holder(&d.pin_path) == Some(d.pid) {
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
    Ok(())
}

/// `stickylb stop`: the daemon exits, the data path stays.
pub(super) fn stop(cli: &Cli, out: &mut dyn Write) -> anyhow::Result<()> {
    let d = find_running(cli).context("no daemon to stop")?;
    terminate(&d)?;
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
    let running = match find_running(cli) {
        Ok(d) => Some(d),
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
            terminate(d)?;
            writeln!(out, "stopped the daemon (pid {})", d.pid)?;
            if !d.socket.exists() {
                writeln!(
                    out,
                    "the daemon removed its control socket {} on exit",
                    d.socket.display()
                )?;
            }
            (d.pin_path.clone(), vec![d.socket.clone()])
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
            // A file too broken to name its socket still has its pins
            // unloaded (with --pin-path).
            (pin, socket(cli).into_iter().collect())
        }
    };
    if !pin_path.exists() {
        writeln!(
            out,
            "nothing pinned at {}: nothing to unload",
            pin_path.display()
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
    let maps: Vec<&str> = gone
        .maps
        .iter()
        .map(String::as_str)
        .filter(|m| *m != crate::dataplane::LINK_PIN_NAME)
        .collect();
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

fn log_unreachable(e: &anyhow::Error) {
    // stderr, not `out`: it says why no daemon was stopped, and `out`
    // says what was removed.
    eprintln!("stickylb: no running daemon found ({e:#}); unloading what is pinned");
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
}
