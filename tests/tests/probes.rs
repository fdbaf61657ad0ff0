//! Health probes for real: UDP checks of a UDP VIP whose backends run real
//! UDP services, exec checks whose command decides, and a daemon short of
//! file descriptors that must not blame its backends. Needs root.

use std::{
    fs,
    io::Read as _,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket},
    path::Path,
    process::Stdio,
    thread,
    time::{Duration, Instant},
};

use lb_user::api::{BackendState, BackendStatus};
use stickylb_tests::{
    daemon::{Daemon, topology_with_pin},
    netns::{ChildGuard, Topology, VIP, backend_addr, enter_path, wait_for},
    traffic::{Load, sweep},
};

const STICKYLB: &str = env!("CARGO_BIN_EXE_stickylb-under-test");
const BACKEND: &str = env!("CARGO_BIN_EXE_slb-backend");

const FAST_TCP: &str =
    "kind = \"tcp\"\ninterval = \"200ms\"\ntimeout = \"100ms\"\nrise = 2\nfall = 2";

fn backend(d: &Daemon, i: usize) -> BackendStatus {
    let vips = d.vips().expect("status");
    vips[0].backends[i].clone()
}

fn state(d: &Daemon, i: usize) -> BackendState {
    backend(d, i).state
}

// ---------------------------------------------------------------- UDP

/// A UDP service on backend `i`: on the VIP (what clients reach through
/// the load balancer) and on the backend's own address (what checks reach),
/// in a process of its own so that it can die while the backend's TCP
/// server lives on.
fn start_udp_service(topo: &Topology, i: usize) -> ChildGuard {
    let ready = topo.tmp.join(format!("udp{i}.ready"));
    let _ = fs::remove_file(&ready);
    let child = topo.backends[i]
        .command(BACKEND)
        .args(["--name", &format!("backend-{i}"), "--listen", "127.0.0.1:0"])
        .arg("--udp")
        .arg(format!("{VIP}:80,{}:80", backend_addr(i)))
        .arg("--ready-file")
        .arg(&ready)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the UDP service");
    let child = ChildGuard(child);
    assert!(
        wait_for(Duration::from_secs(5), || ready.exists()),
        "UDP service of backend {i} did not start"
    );
    child
}

/// One datagram from `client` to the VIP: the backend that answered.
fn udp_ask(client: Ipv4Addr) -> Option<usize> {
    let sock = UdpSocket::bind(SocketAddrV4::new(client, 0)).ok()?;
    sock.connect(SocketAddrV4::new(VIP, 80)).ok()?;
    sock.set_read_timeout(Some(Duration::from_millis(400)))
        .ok()?;
    sock.send(b"hello").ok()?;
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).ok()?;
    let text = std::str::from_utf8(&buf[..n]).ok()?;
    let name = text.strip_suffix(" hello")?;
    name.strip_prefix("backend-")?.parse().ok()
}

/// One datagram from every client, 16 at a time: who answered each.
fn udp_sweep(topo: &Topology, clients: &[Ipv4Addr]) -> Vec<Option<usize>> {
    let clients = clients.to_vec();
    topo.client.enter(move || {
        let per = clients.len().div_ceil(16).max(1);
        let workers: Vec<_> = clients
            .chunks(per)
            .map(|chunk| {
                let chunk = chunk.to_vec();
                thread::spawn(move || chunk.into_iter().map(udp_ask).collect::<Vec<_>>())
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    })
}

fn unanswered(answers: &[Option<usize>]) -> usize {
    answers.iter().filter(|a| a.is_none()).count()
}

#[test]
fn udp_check_takes_a_dead_udp_service_down() {
    let (topo, pin) = topology_with_pin(3, 200, BACKEND.as_ref()).unwrap();
    let mut udp: Vec<Option<ChildGuard>> =
        (0..3).map(|i| Some(start_udp_service(&topo, i))).collect();
    let udp_vip = |health: &str| {
        topo.config(
            &pin.0,
            health,
            "affinity_timeout = \"60s\"\ntable_size = 1021",
        )
        .replace("protocol = \"tcp\"", "protocol = \"udp\"")
    };
    let clients = topo.clients.clone();

    // As reported: a UDP VIP checked by TCP only. The backends' TCP servers
    // answer, so killing one's UDP service goes unnoticed.
    let mut d = Daemon::start(&topo, STICKYLB.as_ref(), &udp_vip(FAST_TCP), &[]).unwrap();
    d.assert_up(Duration::from_secs(5));
    let first = udp_sweep(&topo, &clients);
    assert_eq!(unanswered(&first), 0, "{first:?}\n{}", d.log_text());
    udp[1] = None;
    thread::sleep(Duration::from_millis(1500));
    let tcp_only = udp_sweep(&topo, &clients);
    println!(
        "udp VIP, tcp checks only: UDP service of backend 1 killed, backend 1 is {} after 1.5 s; \
         {}/{} clients got no answer",
        state(&d, 1),
        unanswered(&tcp_only),
        clients.len()
    );
    let check = topo
        .lb
        .command(STICKYLB)
        .arg("check")
        .arg("-c")
        .arg(&d.config)
        .output()
        .unwrap();
    let check_out = format!(
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    println!("stickylb check: {}", check_out.trim());
    for (what, text) in [("check", &check_out), ("the daemon's log", &d.log_text())] {
        assert!(
            text.contains("vip \"web\"") && text.contains("kind = \"udp\""),
            "{what} does not warn that UDP VIP web is only TCP-checked:\n{text}"
        );
    }
    assert!(check.status.success(), "a warning is no error: {check_out}");
    let (code, out, err) = d.cli(&["reload"]);
    assert_eq!(code, 0, "reload: {out}{err}");
    assert!(
        out.contains("warning: vip \"web\" health.kind"),
        "a reload warns too: {out}"
    );

    // Checked by UDP: the dead service takes its backend down, and every
    // client is answered again.
    udp[1] = Some(start_udp_service(&topo, 1));
    fs::write(
        &d.config,
        udp_vip(
            "kind = \"udp\"\npayload = \"ping\"\nexpect = \"ping\"\n\
             interval = \"200ms\"\ntimeout = \"100ms\"\nrise = 2\nfall = 2",
        ),
    )
    .unwrap();
    let log_before = d.log_text().len();
    let (code, out, err) = d.cli(&["reload"]);
    assert_eq!(code, 0, "reload: {out}{err}\n{}", d.log_text());
    assert!(
        !out.contains("warning"),
        "no warning once UDP-checked: {out}"
    );
    let reload_log = d.log_text()[log_before..].to_owned();
    assert!(
        reload_log.contains("reload: ") && !reload_log.contains("checked by tcp only"),
        "no warning once UDP-checked:\n{reload_log}"
    );
    assert!(
        d.wait_backends(Duration::from_secs(5), |s, _| s == BackendState::Up),
        "backends up with udp checks: {:?}\n{}",
        d.vips(),
        d.log_text()
    );
    assert!(
        wait_for(Duration::from_secs(3), || {
            (0..3).all(|i| backend(&d, i).check.as_deref() == Some("reply (14 bytes)"))
        }),
        "udp checks pass: {:?}",
        d.vips()
    );
    let before = udp_sweep(&topo, &clients);
    assert_eq!(unanswered(&before), 0, "{before:?}");
    let t0 = Instant::now();
    udp[1] = None;
    let down = wait_for(Duration::from_secs(3), || {
        state(&d, 1) == BackendState::Down
    });
    let took = t0.elapsed();
    let after = udp_sweep(&topo, &clients);
    println!(
        "udp VIP, udp checks: UDP service of backend 1 killed, backend 1 down after {} ms ({}); \
         {}/{} clients got no answer",
        took.as_millis(),
        backend(&d, 1).reason,
        unanswered(&after),
        clients.len()
    );
    assert!(
        down,
        "backend 1 still {:?}\n{}",
        backend(&d, 1),
        d.log_text()
    );
    assert!(
        backend(&d, 1).reason.contains("connection refused"),
        "an ICMP port unreachable is a refusal: {:?}",
        backend(&d, 1)
    );
    assert_eq!(unanswered(&after), 0, "{after:?}");
    assert!(after.iter().all(|b| *b != Some(1)));
    // Clients of the live backends kept theirs.
    for (b, a) in before.iter().zip(&after) {
        if *b != Some(1) {
            assert_eq!(b, a);
        }
    }
    d.stop().unwrap();
}

// ---------------------------------------------------------------- exec

/// Processes whose arguments are exactly `argv`. Compared argument by
/// argument: every check's `/bin/sh -c <script>` holds the text of the
/// command it may start, and must not count as one.
fn processes_running(argv: &[&str]) -> usize {
    let Ok(dir) = fs::read_dir("/proc") else {
        return 0;
    };
    dir.flatten()
        .filter(|e| {
            fs::read(e.path().join("cmdline")).is_ok_and(|c| {
                let args: Vec<&[u8]> = c
                    .strip_suffix(b"\0")
                    .unwrap_or(&c)
                    .split(|&b| b == 0)
                    .collect();
                args.len() == argv.len() && args.iter().zip(argv).all(|(a, w)| *a == w.as_bytes())
            })
        })
        .count()
}

#[test]
fn exec_check_follows_the_command() {
    let (topo, pin) = topology_with_pin(2, 20, BACKEND.as_ref()).unwrap();
    let dir = topo.tmp.display().to_string();
    // Noisy on purpose: none of this may reach the daemon's log but the
    // last line. `sleep 7.25; true` keeps the shell waiting on a child of
    // its own, which the timeout must kill too.
    let script = format!(
        "echo noise-first; i=0; while [ $i -lt 40 ]; do echo noise-$i; i=$((i+1)); done; \
         echo last-words-$STICKYLB_BACKEND_ADDRESS:$STICKYLB_BACKEND_PORT >&2; \
         if [ -e {dir}/slow-$STICKYLB_BACKEND_ADDRESS ]; then sleep 7.25; true; fi; \
         test ! -e {dir}/down-$STICKYLB_BACKEND_ADDRESS"
    );
    let health = format!(
        "kind = \"exec\"\ncommand = ['/bin/sh', '-c', '{script}']\n\
         interval = \"200ms\"\ntimeout = \"150ms\"\nrise = 2\nfall = 2"
    );
    // The command does not contact the backends, so the kernel never
    // resolves their MACs: the file gives them, as it must for such checks.
    let mut config = topo.config(&pin.0, &health, "table_size = 1021");
    for (i, ns) in topo.backends.iter().enumerate() {
        let link = ns.ip(&["-br", "link", "show", "eth0"]).unwrap();
        let mac = link.split_whitespace().nth(2).unwrap().to_owned();
        let at = format!("address = \"{}\"\nport = 80\n", backend_addr(i));
        config = config.replace(&at, &format!("{at}mac = \"{mac}\"\n"));
    }
    let mut d = Daemon::start(&topo, STICKYLB.as_ref(), &config, &[]).unwrap();
    d.assert_up(Duration::from_secs(5));
    assert_eq!(backend(&d, 0).check.as_deref(), Some("exit status 0"));

    let b1 = backend_addr(1);
    let flag = |what: &str| Path::new(&dir).join(format!("{what}-{b1}"));
    let t0 = Instant::now();
    fs::write(flag("down"), "").unwrap();
    let down = wait_for(Duration::from_secs(3), || {
        state(&d, 1) == BackendState::Down
    });
    println!(
        "exec check exits 1: backend 1 down after {} ms ({})",
        t0.elapsed().as_millis(),
        backend(&d, 1).reason
    );
    assert!(down, "{:?}\n{}", backend(&d, 1), d.log_text());
    assert!(
        backend(&d, 1)
            .reason
            .contains(&format!("exit status 1, last output: last-words-{b1}:80")),
        "{:?}",
        backend(&d, 1)
    );
    let answers = sweep(&topo, &topo.clients);
    assert!(answers.iter().all(|a| *a == Some(0)), "{answers:?}");

    let t0 = Instant::now();
    fs::remove_file(flag("down")).unwrap();
    let up = wait_for(Duration::from_secs(3), || state(&d, 1) == BackendState::Up);
    println!(
        "exec check exits 0 again: backend 1 up after {} ms",
        t0.elapsed().as_millis()
    );
    assert!(up, "{:?}\n{}", backend(&d, 1), d.log_text());

    // A command that overruns the timeout fails, and it is killed with
    // everything it started.
    fs::write(flag("slow"), "").unwrap();
    let down = wait_for(Duration::from_secs(3), || {
        state(&d, 1) == BackendState::Down
    });
    assert!(down, "{:?}\n{}", backend(&d, 1), d.log_text());
    assert!(
        backend(&d, 1).reason.contains("timed out after 150ms"),
        "{:?}",
        backend(&d, 1)
    );
    fs::remove_file(flag("slow")).unwrap();
    assert!(
        wait_for(Duration::from_secs(3), || state(&d, 1) == BackendState::Up),
        "{:?}",
        backend(&d, 1)
    );
    let left = processes_running(&["sleep", "7.25"]);
    assert_eq!(left, 0, "{left} timed-out checks still run");

    let log = d.log_text();
    assert!(
        !log.contains("noise-"),
        "the command's output reached the daemon's log:\n{log}"
    );
    d.stop().unwrap();
}

// ---------------------------------------------------------------- descriptors

fn metrics_text() -> String {
    let mut s = TcpStream::connect("127.0.0.1:9321").expect("connect to metrics");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    std::io::Write::write_all(&mut s, b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text
}

#[test]
fn idle_connections_do_not_take_backends_down() {
    const LIMIT: u64 = 256;
    const IDLE: usize = 400;
    let (topo, pin) = topology_with_pin(3, 60, BACKEND.as_ref()).unwrap();
    let config = topo.config(&pin.0, FAST_TCP, "table_size = 1021");
    let mut d = Daemon::start_limited(&topo, STICKYLB.as_ref(), &config, &[], Some(LIMIT)).unwrap();
    d.assert_up(Duration::from_secs(5));
    let log_before = d.log_text().len();

    let load = Load::start(&topo, &topo.clients, Duration::from_secs(15));
    thread::sleep(Duration::from_millis(500));
    // An unprivileged local user: idle connections to the metrics port,
    // more than the daemon has descriptors, held for 4 s.
    let lb = topo.lb.path();
    let opened = thread::spawn(move || {
        enter_path(&lb);
        let addr: SocketAddr = "127.0.0.1:9321".parse().unwrap();
        let held: Vec<TcpStream> = (0..IDLE)
            .filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok())
            .collect();
        thread::sleep(Duration::from_secs(4));
        held.len()
    })
    .join()
    .unwrap();
    thread::sleep(Duration::from_millis(1000));
    let samples = load.finish();
    let failed = samples.iter().filter(|s| s.backend.is_none()).count();
    let log = d.log_text()[log_before..].to_owned();
    let downs = log.lines().filter(|l| l.contains(" down: ")).count();
    println!(
        "{opened} idle metrics connections held 4 s, RLIMIT_NOFILE {LIMIT}: {failed}/{} requests \
         failed, {downs} backend-down transitions",
        samples.len()
    );
    assert!(opened > LIMIT as usize, "only {opened} connections opened");
    assert_eq!(downs, 0, "backends went down:\n{log}");
    assert_eq!(failed, 0, "requests failed:\n{log}");
    assert!(samples.len() > 100, "too few requests: {}", samples.len());

    // The refused connections are the daemon's own business: counted.
    let text = topo.lb.enter(metrics_text);
    let refused = text
        .lines()
        .find(|l| l.starts_with("stickylb_refused_connections_total{listener=\"metrics\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok());
    println!("metrics connections refused over the cap: {refused:?}");
    assert!(refused.is_some_and(|n| n > 0.0), "{text}");
    assert!(d.log_text().contains("RLIMIT_NOFILE"), "{}", d.log_text());
    assert!(
        d.wait_backends(Duration::from_secs(1), |s, _| s == BackendState::Up),
        "{:?}",
        d.vips()
    );

    // Out of descriptors all the same (a limit just above what it has
    // open): checks cannot run, and that must count for no backend.
    let pid = d.child.as_ref().unwrap().pid();
    let open = fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count() as u64;
    // Only the soft limit: raising a hard limit again takes CAP_SYS_RESOURCE.
    let tight = libc::rlimit {
        rlim_cur: open + 4,
        rlim_max: LIMIT,
    };
    // SAFETY: prlimit(2) on our own child, with a valid rlimit.
    let rc = unsafe {
        libc::prlimit(
            pid as i32,
            libc::RLIMIT_NOFILE,
            &tight,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    let log_before = d.log_text().len();
    let load = Load::start(&topo, &topo.clients, Duration::from_secs(15));
    let lb = topo.lb.path();
    thread::spawn(move || {
        enter_path(&lb);
        let addr: SocketAddr = "127.0.0.1:9321".parse().unwrap();
        let held: Vec<TcpStream> = (0..100)
            .filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok())
            .collect();
        thread::sleep(Duration::from_secs(3));
        drop(held);
    })
    .join()
    .unwrap();
    let samples = load.finish();
    let failed = samples.iter().filter(|s| s.backend.is_none()).count();
    // Descriptors back, so that the control socket answers again.
    let roomy = libc::rlimit {
        rlim_cur: LIMIT,
        rlim_max: LIMIT,
    };
    // SAFETY: as above.
    let rc = unsafe {
        libc::prlimit(
            pid as i32,
            libc::RLIMIT_NOFILE,
            &roomy,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    let mut status = None;
    assert!(wait_for(Duration::from_secs(5), || {
        status = d.status().ok();
        status.is_some()
    }));
    let local = status.unwrap().local_errors;
    let log = d.log_text()[log_before..].to_owned();
    let downs = log.lines().filter(|l| l.contains(" down: ")).count();
    let warnings = log.matches("health checks cannot run").count();
    println!(
        "descriptors exhausted for 3 s (limit {} with {open} open): {} checks could not run \
         ({:?}), {failed}/{} requests failed, {downs} backend-down transitions, {warnings} \
         log lines",
        open + 4,
        local.checks,
        local.last_check_error,
        samples.len()
    );
    assert!(local.checks > 0, "no local error counted:\n{log}");
    assert!(
        local
            .last_check_error
            .as_deref()
            .is_some_and(|e| e.contains("os error 24")),
        "{local:?}"
    );
    assert_eq!(downs, 0, "backends went down:\n{log}");
    assert_eq!(failed, 0, "requests failed:\n{log}");
    assert!((1..=2).contains(&warnings), "rate-limited log:\n{log}");
    d.stop().unwrap();
}
