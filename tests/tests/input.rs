//! Hostile or mistaken input, for real: the control socket under a careless
//! umask, backends that would loop or black-hole traffic, reloads of files
//! `check` rejects, and the operator surface (warnings, pipes, JSON). Needs
//! root (CI is root).

use std::{
    os::unix::process::CommandExt as _,
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use lb_user::control::{self, Request};
use stickylb_tests::{
    daemon::PinGuard,
    netns::{ChildGuard, Topology, TopologyOptions, wait_for},
};

const STICKYLB: &str = env!("CARGO_BIN_EXE_stickylb-under-test");
const BACKEND: &str = env!("CARGO_BIN_EXE_slb-backend");
const NOBODY: libc::uid_t = 65534;

fn topology(backends: usize) -> Topology {
    Topology::up(
        &TopologyOptions {
            backends,
            clients: 0,
            redis: None,
        },
        BACKEND.as_ref(),
    )
    .unwrap()
}

/// Forks a child that drops to uid/gid nobody and connects to `socket` in a
/// tight loop until `stop` exists; returns its pid and the read end of a
/// pipe on which it writes how many connections succeeded.
///
/// Only async-signal-safe calls happen after the fork: everything the child
/// needs is built before it.
fn spawn_intruder(socket: &Path, stop: &Path) -> (libc::pid_t, std::fs::File) {
    use std::os::unix::ffi::OsStrExt as _;
    use std::os::unix::io::FromRawFd as _;
    // SAFETY: sockaddr_un is plain data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = socket.as_os_str().as_bytes();
    assert!(bytes.len() < addr.sun_path.len());
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    let stop = std::ffi::CString::new(stop.as_os_str().as_bytes()).unwrap();
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two descriptors pipe writes.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: the child only makes raw system calls on data prepared above
    // and leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // SAFETY: see above; nothing here allocates or takes a lock.
        unsafe {
            libc::close(fds[0]);
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(NOBODY) != 0
                || libc::setuid(NOBODY) != 0
            {
                libc::_exit(2);
            }
            let mut got: u64 = 0;
            let mut tries: u64 = 0;
            // Stop when told, or after 60 s whatever happens.
            while tries < 200_000_000 {
                tries += 1;
                let s = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                if s >= 0 {
                    let rc = libc::connect(
                        s,
                        std::ptr::from_ref(&addr).cast(),
                        std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
                    );
                    if rc == 0 {
                        got += 1;
                    }
                    libc::close(s);
                }
                if tries % 64 == 0 && libc::access(stop.as_ptr(), libc::F_OK) == 0 {
                    break;
                }
            }
            let buf = got.to_le_bytes();
            libc::write(fds[1], buf.as_ptr().cast(), buf.len());
            libc::_exit(0);
        }
    }
    // SAFETY: fds[1] is ours and open; fds[0] becomes the File.
    unsafe { libc::close(fds[1]) };
    (pid, unsafe { std::fs::File::from_raw_fd(fds[0]) })
}

/// `stickylb run` in the LB namespace under umask 000, as a careless init
/// script would start it.
fn run_under_umask_000(topo: &Topology, config: &Path, log: &Path) -> ChildGuard {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut cmd = topo.lb.command(STICKYLB);
    cmd.arg("run")
        .arg("-c")
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    // SAFETY: umask is async-signal-safe and touches only the child.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0);
            Ok(())
        });
    }
    ChildGuard(cmd.spawn().unwrap())
}

#[test]
fn control_socket_is_never_connectable_by_others() {
    let topo = topology(0);
    let pin = PinGuard(topo.daemon_pin());
    // A socket folder the daemon creates itself, under umask 000.
    let dir = topo.tmp.join("run/stickylb");
    let socket = dir.join("ctl.sock");
    let config = topo.tmp.join("stickylb.toml");
    std::fs::write(
        &config,
        format!(
            "interface = \"eth0\"\nxdp_mode = \"skb\"\npin_path = \"{}\"\n\
             control_socket = \"{}\"\nmetrics_listen = \"off\"\naffinity_capacity = 1024\n\
             [[vip]]\nname = \"web\"\naddress = \"10.77.100.1\"\nport = 80\n\
             [[vip.backend]]\naddress = \"10.77.0.10\"\nport = 80\n",
            pin.0.display(),
            socket.display()
        ),
    )
    .unwrap();
    // The test's scratch folder must let nobody reach the socket's folder,
    // else the test would prove nothing.
    std::fs::set_permissions(
        &topo.tmp,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let log = topo.tmp.join("daemon.log");
    let stop = topo.tmp.join("intruder.stop");
    let (pid, mut result) = spawn_intruder(&socket, &stop);
    let started = Instant::now();
    let mut runs = 0;
    for _ in 0..10 {
        let mut d = run_under_umask_000(&topo, &config, &log);
        let up = wait_for(Duration::from_secs(10), || {
            d.exited().is_some() || control::call(&socket, &Request::Status).is_ok()
        });
        assert!(
            up && d.exited().is_none(),
            "daemon did not come up; log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        runs += 1;
        d.signal(libc::SIGTERM);
        assert!(wait_for(Duration::from_secs(10), || d.exited().is_some()));
    }
    std::fs::write(&stop, "").unwrap();
    let mut buf = [0u8; 8];
    std::io::Read::read_exact(&mut result, &mut buf).expect("the intruder reports");
    let mut status = 0;
    // SAFETY: pid is our child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(status, 0, "the intruder could not drop to nobody");
    let got = u64::from_le_bytes(buf);
    let dir_mode = std::fs::metadata(&dir).unwrap().permissions();
    let dir_mode = std::os::unix::fs::PermissionsExt::mode(&dir_mode) & 0o7777;
    eprintln!(
        "control socket under umask 000: {got} connections by uid nobody over {runs} daemon \
         starts in {:.1?}; socket folder mode {dir_mode:o}",
        started.elapsed()
    );
    assert_eq!(got, 0, "an unprivileged user reached the control socket");
    assert_eq!(
        dir_mode & 0o022,
        0,
        "the socket folder is writable by others (mode {dir_mode:o}): anyone could put \
         their own socket in its place"
    );
}
