//! The exec check: a command whose exit status decides, as keepalived's
//! MISC_CHECK. It runs without a shell, with the backend's address and port
//! in its environment, in a process group of its own so that a timeout kills
//! whatever it started. Its output goes to pipes read here, never to the
//! daemon's own stdout and stderr: only its last line reaches the detail.

use std::{net::SocketAddr, os::unix::process::ExitStatusExt as _, process::Stdio, time::Duration};

use tokio::{
    io::{AsyncRead, AsyncReadExt as _},
    process::Command,
};

use super::{Failure, io_failure};

/// Bytes of each output stream kept, from its end.
const TAIL: usize = 512;
/// Characters of output shown in the detail.
const SHOWN: usize = 120;
/// How long the output may still be read once the command has exited (a
/// background child of it may hold the pipes open).
const DRAIN: Duration = Duration::from_millis(50);

/// Kills the command's process group when the check ends, on time or not:
/// a check leaves nothing running.
struct Group(i32);

impl Drop for Group {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the group we created; the group id is not
        // reused while any process is in it, and ESRCH is harmless.
        unsafe { libc::kill(-self.0, libc::SIGKILL) };
    }
}

pub(super) async fn run(command: &[String], target: SocketAddr) -> Result<String, Failure> {
    let (program, args) = command.split_first().ok_or("no command configured")?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env("STICKYLB_BACKEND_ADDRESS", target.ip().to_string())
        .env("STICKYLB_BACKEND_PORT", target.port().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    if let Some(limit) = crate::limits::for_children() {
        // SAFETY: setrlimit is async-signal-safe and only changes the child.
        unsafe {
            cmd.pre_exec(move || {
                libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
                Ok(())
            });
        }
    }
    let mut child = cmd.spawn().map_err(|e| {
        let mut f = io_failure(e);
        f.detail = format!("cannot run {program}: {}", f.detail);
        f
    })?;
    let _group = child.id().and_then(|p| i32::try_from(p).ok()).map(Group);
    let (mut out, mut err) = (Tail::default(), Tail::default());
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let mut status = None;
    // Set when the command exits: the output is read until then at most.
    let mut drained = tokio::time::Instant::now();
    let (mut b1, mut b2) = ([0u8; 1024], [0u8; 1024]);
    while status.is_none() || stdout.is_some() || stderr.is_some() {
        tokio::select! {
            s = child.wait(), if status.is_none() => {
                status = Some(s.map_err(|e| format!("cannot wait for {program}: {e}"))?);
                drained = tokio::time::Instant::now() + DRAIN;
            }
            n = read(&mut stdout, &mut b1) => out.add(&mut stdout, n, &b1),
            n = read(&mut stderr, &mut b2) => err.add(&mut stderr, n, &b2),
            () = tokio::time::sleep_until(drained), if status.is_some() => break,
        }
    }
    let status = status.expect("the loop ends after the exit (or it times out)");
    let last = err.last_line().or_else(|| out.last_line());
    let said = last.map_or_else(
        || " (no output)".to_owned(),
        |l| format!(", last output: {l}"),
    );
    match (status.code(), status.signal()) {
        (Some(0), _) => Ok("exit status 0".to_owned()),
        (Some(code), _) => Err(format!("exit status {code}{said}").into()),
        (None, Some(sig)) => Err(format!("killed by signal {sig}{said}").into()),
        (None, None) => Err(format!("ended with {status}{said}").into()),
    }
}

/// Reads from a pipe still open; never ready once it is closed.
async fn read(pipe: &mut Option<impl AsyncRead + Unpin>, buf: &mut [u8]) -> std::io::Result<usize> {
    match pipe {
        Some(p) => p.read(buf).await,
        None => std::future::pending().await,
    }
}

/// The end of one output stream.
#[derive(Default)]
struct Tail(Vec<u8>);

impl Tail {
    fn add<P>(&mut self, pipe: &mut Option<P>, n: std::io::Result<usize>, buf: &[u8]) {
        match n {
            Ok(0) | Err(_) => *pipe = None,
            Ok(n) => {
                self.0.extend_from_slice(&buf[..n]);
                if self.0.len() > TAIL {
                    self.0.drain(..self.0.len() - TAIL);
                }
            }
        }
    }

    /// The last non-empty line, printable and short, for logs.
    fn last_line(&self) -> Option<String> {
        let text = String::from_utf8_lossy(&self.0);
        let line = text.lines().rev().map(str::trim).find(|l| !l.is_empty())?;
        let mut shown: String = line
            .chars()
            .take(SHOWN)
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
        if line.chars().count() > SHOWN {
            shown.push('…');
        }
        Some(shown)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::super::{Probe, probe_once};
    use super::*;

    fn sh(script: &str) -> Probe {
        Probe::Exec {
            command: vec!["/bin/sh".into(), "-c".into(), script.into()],
        }
    }

    const TARGET: &str = "192.0.2.7:8080";
    const T: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn exit_status_decides_with_the_backend_in_the_environment() {
        let target = TARGET.parse().unwrap();
        let o = probe_once(
            target,
            &sh("test \"$STICKYLB_BACKEND_ADDRESS:$STICKYLB_BACKEND_PORT\" = 192.0.2.7:8080"),
            T,
        )
        .await;
        assert!(o.ok && !o.local, "{o:?}");
        assert_eq!(o.detail, "exit status 0");

        let o = probe_once(target, &sh("echo out; echo \"bad  thing\" >&2; exit 3"), T).await;
        assert!(!o.ok && !o.local, "{o:?}");
        assert_eq!(o.detail, "exit status 3, last output: bad  thing");

        let o = probe_once(target, &sh("seq 1 100000; echo; exit 1"), T).await;
        assert_eq!(o.detail, "exit status 1, last output: 100000");

        let o = probe_once(target, &sh("exit 2"), T).await;
        assert_eq!(o.detail, "exit status 2 (no output)");

        let o = probe_once(target, &sh("kill -9 $$"), T).await;
        assert_eq!(o.detail, "killed by signal 9 (no output)");

        let long = "x".repeat(300);
        let o = probe_once(target, &sh(&format!("echo {long}; false")), T).await;
        assert_eq!(
            o.detail,
            format!("exit status 1, last output: {}…", "x".repeat(SHOWN))
        );
    }

    #[tokio::test]
    async fn a_missing_program_fails_the_check() {
        let probe = Probe::Exec {
            command: vec!["/nonexistent/check".into()],
        };
        let o = probe_once(TARGET.parse().unwrap(), &probe, T).await;
        assert!(!o.ok && !o.local, "{o:?}");
        assert!(
            o.detail.starts_with("cannot run /nonexistent/check: "),
            "{o:?}"
        );
    }

    #[tokio::test]
    async fn a_slow_command_is_killed_with_its_children() {
        let dir = std::env::temp_dir().join(format!("stickylb-exec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pid_file = dir.join("pid");
        let started = Instant::now();
        let o = probe_once(
            TARGET.parse().unwrap(),
            &sh(&format!(
                "sleep 30 & echo $! > {}; wait",
                pid_file.display()
            )),
            Duration::from_millis(300),
        )
        .await;
        assert!(started.elapsed() < Duration::from_secs(2), "{o:?}");
        assert_eq!(o.detail, "timed out after 300ms");
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let gone = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(10));
            // A zombie of a killed child whose parent is gone is reaped by
            // init; either way it must not be running.
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map_or(true, |s| s.split(' ').nth(2) == Some("Z"))
        });
        assert!(gone, "the check's child {pid} still runs");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_finished_command_returns_even_if_a_child_keeps_its_output_open() {
        let started = Instant::now();
        let o = probe_once(TARGET.parse().unwrap(), &sh("sleep 5 & exit 0"), T).await;
        assert!(o.ok, "{o:?}");
        assert!(started.elapsed() < Duration::from_secs(2), "{o:?}");
    }
}
