//! Hostile or mistaken input, for real: the control socket under a careless
//! umask, backends that would loop or black-hole traffic, reloads of files
//! `check` rejects, and the operator surface (warnings, pipes, JSON). Needs
//! root (CI is root).

use std::{
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use lb_user::control::{self, Request};
use stickylb_tests::{
    daemon::{Daemon, PinGuard},
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
            // Not the test's output pipes: a reader of them waits for
            // every writer to close.
            libc::close(1);
            libc::close(2);
            let parent = libc::getppid();
            let mut now = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now);
            let deadline = now.tv_sec + 60;
            let mut got: u64 = 0;
            let mut tries: u64 = 0;
            // Until told to stop; or the test is gone, or 60 s passed.
            loop {
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
                if tries.is_multiple_of(64) {
                    libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now);
                    if libc::access(stop.as_ptr(), libc::F_OK) == 0
                        || libc::getppid() != parent
                        || now.tv_sec > deadline
                    {
                        break;
                    }
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
    // Two, one per core of a small CI machine, to hit the window if it exists.
    let intruders = [
        spawn_intruder(&socket, &stop),
        spawn_intruder(&socket, &stop),
    ];
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
    let mut got = 0;
    for (pid, mut result) in intruders {
        let mut buf = [0u8; 8];
        std::io::Read::read_exact(&mut result, &mut buf).expect("the intruder reports");
        let mut status = 0;
        // SAFETY: pid is our child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(status, 0, "the intruder could not drop to nobody");
        got += u64::from_le_bytes(buf);
    }
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

const ROUTER: &str = "10.77.0.254";
const ROUTER_MAC: &str = "02:aa:00:00:00:fe";
const FAST_HEALTH: &str =
    "kind = \"tcp\"\ninterval = \"200ms\"\ntimeout = \"100ms\"\nrise = 1\nfall = 2";

/// The MAC of `iface` in `ns`, as `ip` reports it (sysfs would show the
/// root namespace's interfaces).
fn mac_of(ns: &stickylb_tests::netns::Netns, iface: &str) -> String {
    let text = ns.ip(&["-o", "link", "show", iface]).unwrap();
    let mut words = text.split_whitespace();
    words.find(|w| *w == "link/ether").unwrap();
    words.next().unwrap().to_owned()
}

/// `stickylb check -c FILE` in the LB namespace, with `config` in FILE.
fn check_in_lb(topo: &Topology, config: &str, args: &[&str]) -> (i32, String, String) {
    let path = topo.tmp.join("check.toml");
    std::fs::write(&path, config).unwrap();
    let out = topo
        .lb
        .command(STICKYLB)
        .args(args)
        .arg("check")
        .arg("-c")
        .arg(&path)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn backends_that_are_this_host_or_its_router_are_refused() {
    let topo = topology(1);
    // A router on the link, its MAC resolved, as a default gateway is.
    topo.lb
        .ip(&["route", "add", "default", "via", ROUTER, "dev", "eth0"])
        .unwrap();
    topo.lb
        .ip(&[
            "neigh",
            "replace",
            ROUTER,
            "lladdr",
            ROUTER_MAC,
            "dev",
            "eth0",
            "nud",
            "permanent",
        ])
        .unwrap();
    let lb_mac = mac_of(&topo.lb, "eth0");
    let pin = PinGuard(topo.daemon_pin());
    let good = topo.config(&pin.0, FAST_HEALTH, "");
    let backend = "address = \"10.77.0.10\"\nport = 80\n";
    let with_backend = |b: &str| good.replace(backend, b);
    let cases = [
        (
            with_backend("address = \"10.77.0.1\"\nport = 80\n"),
            "backend 10.77.0.1:80 address: 10.77.0.1 is an address of this host (on eth0)",
        ),
        (
            with_backend("address = \"127.0.0.1\"\nport = 80\n"),
            "backend 127.0.0.1:80 address: 127.0.0.1 is a loopback address",
        ),
        (
            with_backend(&format!("address = \"{ROUTER}\"\nport = 80\n")),
            "is this host's default gateway",
        ),
        (
            with_backend(&format!("{backend}mac = \"{lb_mac}\"\n")),
            "is the MAC of eth0, this host's own interface",
        ),
        (
            with_backend(&format!("{backend}mac = \"{ROUTER_MAC}\"\n")),
            "is the MAC of the router (10.77.0.254",
        ),
    ];
    let mut refused = 0;
    for (config, want) in &cases {
        let (code, _, err) = check_in_lb(&topo, config, &[]);
        eprintln!("check: exit {code}: {}", err.trim());
        if code == 1
            && err.contains(want)
            && (err.contains("give ") || err.contains("leave mac out"))
        {
            refused += 1;
        }
    }
    eprintln!(
        "check refused {refused} of {} misconfigured backends",
        cases.len()
    );
    assert_eq!(refused, cases.len());

    // `run` refuses what `check` refuses, before it attaches.
    let mut d = Daemon::start(&topo, STICKYLB.as_ref(), &cases[0].0, &[]);
    match &mut d {
        Ok(_) => panic!("the daemon started with a backend that is itself"),
        Err(e) => assert!(e.contains(cases[0].1), "{e}"),
    }
    drop(d);

    // A VIP the interface does not hold: a warning with the fix, not a refusal.
    let unheld = good.replace("10.77.100.1", "10.77.200.1");
    let (code, out, err) = check_in_lb(&topo, &unheld, &[]);
    eprintln!("check of an unheld VIP: exit {code}: {}", err.trim());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("1 warning"), "{out}");
    assert!(
        err.contains("10.77.200.1 is not an address of eth0")
            && err.contains("ip addr add 10.77.200.1/32 dev eth0"),
        "{err}"
    );
    let (code, out, err) = check_in_lb(&topo, &unheld, &["--json"]);
    assert_eq!(code, 0, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        report["warnings"][0]["path"], "vip \"web\" address",
        "{report}"
    );

    // The same rules for a running daemon: reloads and live adds.
    let mut d = Daemon::start(&topo, STICKYLB.as_ref(), &good, &[]).unwrap();
    assert!(
        d.wait_backends(Duration::from_secs(5), |s, _| s
            == lb_user::api::BackendState::Up),
        "{}",
        d.log_text()
    );
    // What a reload could change (not the check's latency).
    let shape = |d: &Daemon| -> Vec<(String, u32, usize, Option<String>)> {
        d.vips()
            .unwrap()
            .iter()
            .flat_map(|v| v.backends.iter())
            .map(|b| (b.address.to_string(), b.weight, b.slots, b.mac.clone()))
            .collect()
    };
    let before = shape(&d);
    let mut reloads_refused = 0;
    let bad_reloads = [
        (
            good.replace("interface = \"eth0\"", "interface = \"nosuchnic0\""),
            "no network interface named \"nosuchnic0\"",
        ),
        (cases[0].0.clone(), cases[0].1),
        (cases[4].0.clone(), cases[4].1),
    ];
    for (config, want) in &bad_reloads {
        std::fs::write(&d.config, config).unwrap();
        let (code, out, err) = d.cli(&["reload"]);
        eprintln!("reload: exit {code}: {}{}", out.trim(), err.trim());
        if code == 1 && err.contains(want) {
            reloads_refused += 1;
        }
        assert_eq!(shape(&d), before, "a refused reload changed the state");
    }
    eprintln!(
        "reload refused {reloads_refused} of {} files check rejects",
        bad_reloads.len()
    );
    assert_eq!(reloads_refused, bad_reloads.len());

    let bad_adds = [
        (vec!["127.0.0.1:80"], "127.0.0.1 is a loopback address"),
        (vec!["10.77.0.1:80"], "10.77.0.1 is an address of this host"),
        (vec!["10.77.0.254:80"], "is this host's default gateway"),
        (
            vec!["10.77.0.10:81", "--mac", ROUTER_MAC],
            "is the MAC of the router",
        ),
        (
            vec!["10.77.0.10:81", "--mac", lb_mac.as_str()],
            "is the MAC of eth0",
        ),
    ];
    let mut adds_refused = 0;
    for (args, want) in &bad_adds {
        let mut cli = vec!["backend", "add", "--vip", "web"];
        cli.extend(args);
        let (code, _, err) = d.cli(&cli);
        eprintln!(
            "backend add {}: exit {code}: {}",
            args.join(" "),
            err.trim()
        );
        if code == 1 && err.contains(want) {
            adds_refused += 1;
        }
    }
    eprintln!(
        "live add refused {adds_refused} of {} misconfigured backends",
        bad_adds.len()
    );
    let after = shape(&d);
    assert_eq!(adds_refused, bad_adds.len(), "{after:?}");
    assert_eq!(after, before);
    // A good backend is still taken.
    let (code, _, err) = d.cli(&["backend", "add", "--vip", "web", "10.77.0.10:8080"]);
    assert_eq!(code, 0, "{err}");

    // All weights 0 is allowed, and said in the log.
    std::fs::write(
        &d.config,
        good.replace(backend, &format!("{backend}weight = 0\n")),
    )
    .unwrap();
    let (code, _, err) = d.cli(&["reload"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        wait_for(Duration::from_secs(2), || d
            .log_text()
            .contains("every backend has weight 0")),
        "{}",
        d.log_text()
    );
    d.stop().unwrap();
}

#[test]
fn driver_mode_on_a_veth_whose_peer_has_no_xdp_is_warned_about() {
    let topo = topology(1);
    let pin = PinGuard(topo.daemon_pin());
    let config = topo
        .config(&pin.0, FAST_HEALTH, "")
        .replace("xdp_mode = \"driver\"", "xdp_mode = \"auto\"");
    let warning = "has no XDP program: every frame the program forwards (XDP_TX) is dropped";
    // The harness gives the LB's bridge port an XDP program: no warning.
    let mut d = Daemon::start(&topo, STICKYLB.as_ref(), &config, &[]).unwrap();
    d.stop().unwrap();
    let with_peer = d.log_text();
    assert!(!with_peer.contains(warning), "{with_peer}");
    std::fs::remove_file(&d.log).unwrap();

    // Without it, forwarded frames are dropped: say so, with the fix.
    lb_user::dataplane::Dataplane::detach_pinned(
        &topo.peer_pin.join(lb_user::dataplane::LINK_PIN_NAME),
    )
    .unwrap();
    d.restart(&topo, &[]).unwrap();
    let log = d.log_text();
    d.stop().unwrap();
    let line = log.lines().find(|l| l.contains(warning));
    eprintln!("veth peer without XDP: {line:?}");
    let line = line.unwrap_or_else(|| panic!("no warning in:\n{log}"));
    assert!(
        line.contains("WARN")
            && line.contains("eth0 is a veth")
            && line.contains("xdp_mode = \"skb\""),
        "{line}"
    );
}

/// Runs the CLI with stdout (and with `merged`, stderr too) on a pipe whose
/// reader has gone, as `stickylb status 2>&1 | head -0` would: every write
/// fails with EPIPE. Exit code and what went to stderr when not merged.
fn with_closed_stdout(d: &Daemon, args: &[&str], merged: bool) -> (i32, String) {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut cmd = Command::new(&d.bin);
    cmd.arg("--socket")
        .arg(&d.socket)
        .arg("-c")
        .arg(&d.config)
        .args(args)
        .stdin(Stdio::null())
        .stdout(writer.try_clone().unwrap());
    if merged {
        cmd.stderr(writer);
    } else {
        drop(writer);
        cmd.stderr(Stdio::piped());
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn operator_surface_pipes_json_man_pages_and_logs() {
    let topo = topology(1);
    let pin = PinGuard(topo.daemon_pin());
    let config = topo.config(&pin.0, FAST_HEALTH, "");
    let d = Daemon::start(&topo, STICKYLB.as_ref(), &config, &[]).unwrap();
    assert!(
        d.wait_backends(Duration::from_secs(5), |s, _| s
            == lb_user::api::BackendState::Up),
        "{}",
        d.log_text()
    );

    // `… | head -1`: no broken-pipe message, no panic, whatever the output.
    let man_dir = topo.tmp.join("man");
    let man_dir_s = man_dir.display().to_string();
    let commands: Vec<Vec<&str>> = vec![
        vec!["status"],
        vec!["backends"],
        vec!["flows"],
        vec!["lookup", "10.77.1.1"],
        vec!["--json", "status"],
        vec!["backend", "weight", "--vip", "web", "10.77.0.10:80", "2"],
        vec!["reload"],
        vec!["man"],
        vec!["man", "--dir", &man_dir_s],
        vec!["completions", "bash"],
        vec!["--help"],
    ];
    let mut clean = 0;
    for args in &commands {
        let (code, err) = with_closed_stdout(&d, args, false);
        let (merged_code, _) = with_closed_stdout(&d, args, true);
        if (code, err.as_str(), merged_code) == (0, "", 0) {
            clean += 1;
        } else {
            eprintln!("{args:?} | head -0: exit {code} (merged: {merged_code}), stderr {err:?}");
        }
    }
    // Errors still say what went wrong (exit 1), and a closed stderr is no
    // panic (exit 101): `stickylb --socket /nowhere status 2>&1 | head -0`.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(STICKYLB)
        .args(["--socket", "/nonexistent/ctl.sock", "status"])
        .stdout(writer.try_clone().unwrap())
        .stderr(writer)
        .status()
        .unwrap();
    eprintln!(
        "closed pipe: {clean} of {} outputs clean; an error into a closed pipe exits {:?}",
        commands.len(),
        out.code()
    );
    assert_eq!(clean, commands.len());
    assert_eq!(out.code(), Some(1));

    // Under --json every answer is JSON: argument errors too, and check's.
    let cli = |args: &[&str]| {
        let out = Command::new(STICKYLB)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = cli(&["--json", "lookup", "300.1.1.1"]);
    let v: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out:?} {err:?}"));
    assert_eq!((code, &v["ok"]), (2, &serde_json::json!(false)), "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("invalid value '300.1.1.1'")
    );
    let (code, out, _) = cli(&["--json", "backend"]);
    assert_eq!(code, 2);
    assert!(
        serde_json::from_str::<serde_json::Value>(&out).is_ok(),
        "{out}"
    );
    let config_s = d.config.display().to_string();
    let (code, out, err) = cli(&["--json", "check", "-c", &config_s]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("check --json is not JSON ({e}): {out:?}"));
    assert_eq!(
        (v["vips"].as_u64(), v["backends"].as_u64()),
        (Some(1), Some(1)),
        "{v}"
    );
    assert!(v["warnings"].is_array(), "{v}");
    let bad = topo.tmp.join("bad.toml");
    std::fs::write(&bad, config.replace("port = 80\n", "port = 0\n")).unwrap();
    let (code, out, _) = cli(&["--json", "check", "-c", &bad.display().to_string()]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(code, 1);
    assert!(v["problems"][0]["path"].is_string(), "{v}");

    // `stickylb man --dir`: a page for every command, and every page a page
    // names exists.
    // `--dir` takes a man tree: section 1 in man1/, stickylb.toml(5) in man5/.
    assert!(man_dir.join("man5/stickylb.toml.5").is_file());
    let man_dir = man_dir.join("man1");
    let pages: Vec<String> = std::fs::read_dir(&man_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let mut named = std::collections::BTreeSet::new();
    for p in &pages {
        let text = std::fs::read_to_string(man_dir.join(p)).unwrap();
        assert!(text.contains(".TH "), "{p} is no man page");
        let mut rest = text.as_str();
        while let Some(i) = rest.find("stickylb\\-") {
            rest = &rest[i..];
            let end = rest.find("(1)").unwrap_or(0);
            if end > 0 && !rest[..end].contains(char::is_whitespace) {
                named.insert(format!("{}.1", rest[..end].replace("\\-", "-")));
            }
            rest = &rest[1..];
        }
    }
    let missing: Vec<&String> = named.iter().filter(|n| !pages.contains(n)).collect();
    eprintln!(
        "man --dir: {} pages, {} named by others, missing {missing:?}",
        pages.len(),
        named.len()
    );
    assert!(missing.is_empty());
    for c in [
        "stickylb",
        "run",
        "check",
        "status",
        "backends",
        "lookup",
        "flows",
        "backend",
        "backend-add",
        "backend-remove",
        "backend-weight",
        "backend-drain",
        "backend-undrain",
        "reload",
        "completions",
        "man",
    ] {
        let page = if c == "stickylb" {
            "stickylb.1".to_owned()
        } else {
            format!("stickylb-{c}.1")
        };
        assert!(pages.contains(&page), "no {page} in {pages:?}");
    }
    assert!(!pages.iter().any(|p| p.contains("help")), "{pages:?}");

    // RUST_LOG is documented, and the log tells milliseconds.
    let (_, help, _) = cli(&["run", "--help"]);
    assert!(
        help.contains("RUST_LOG") && help.contains("lb_user::daemon"),
        "{help}"
    );
    let log = d.log_text();
    let first = log.lines().next().unwrap_or_default();
    eprintln!("log line: {first}");
    let stamp = first.split_whitespace().next().unwrap_or_default();
    // [2026-01-31T12:00:00.123Z
    assert!(
        stamp.len() == 25 && stamp.as_bytes()[20] == b'.' && stamp.ends_with('Z'),
        "no millisecond timestamp: {first}"
    );
}
