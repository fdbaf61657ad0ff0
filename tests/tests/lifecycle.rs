//! The daemon's life cycle as operators live it: one daemon per pin_path, a
//! restart (SIGTERM, then start: what `systemctl restart` does) that loses
//! nothing, taking the data path down only when asked (`stickylb unload`),
//! and a CLI that reaches the daemon whatever state its config file is in.
//! Needs root (CI is root).

use std::{
    fs,
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use lb_user::api::BackendState;
use stickylb_tests::{
    daemon::{Daemon, PinGuard, topology_with_pin},
    netns::{ChildGuard, Topology, wait_for},
    traffic::{Load, summarize, sweep},
};

const STICKYLB: &str = env!("CARGO_BIN_EXE_stickylb-under-test");
const BACKEND: &str = env!("CARGO_BIN_EXE_slb-backend");

const FAST_HEALTH: &str =
    "kind = \"tcp\"\ninterval = \"200ms\"\ntimeout = \"100ms\"\nrise = 2\nfall = 2";

/// A topology with a daemon running and every backend up.
fn running(clients: usize) -> (Topology, PinGuard, String, Daemon) {
    let (topo, pin) = topology_with_pin(3, clients, BACKEND.as_ref()).unwrap();
    let config = topo.config(
        &pin.0,
        FAST_HEALTH,
        "affinity_timeout = \"120s\"\ntable_size = 1021",
    );
    let d = Daemon::start(&topo, STICKYLB.as_ref(), &config, &[]).unwrap();
    d.assert_up(Duration::from_secs(5));
    (topo, pin, config, d)
}

fn xdp_on_lb(topo: &Topology) -> bool {
    topo.lb
        .ip(&["link", "show", "eth0"])
        .unwrap()
        .contains("xdp")
}

fn answered(v: &[Option<usize>]) -> usize {
    v.iter().filter(|b| b.is_some()).count()
}

/// How a second `stickylb run` on the running daemon's pins ended.
struct SecondRun {
    /// Its exit status if it exited by itself within the bound (refused).
    refused: Option<std::process::ExitStatus>,
    log: String,
}

/// Runs `stickylb run` with `config_text` beside the running daemon; one
/// that is still running after a few seconds was not refused and is then
/// stopped with SIGTERM, as an operator would.
fn second_run(topo: &Topology, config_text: &str, args: &[&str], tag: &str) -> SecondRun {
    let config = topo.tmp.join(format!("second-{tag}.toml"));
    fs::write(&config, config_text).unwrap();
    let log_path = topo.tmp.join(format!("second-{tag}.log"));
    let log = fs::File::create(&log_path).unwrap();
    let mut child = ChildGuard(
        topo.lb
            .command(STICKYLB)
            .arg("run")
            .arg("-c")
            .arg(&config)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let mut status = None;
    wait_for(Duration::from_secs(3), || {
        status = child.exited();
        status.is_some()
    });
    if status.is_none() {
        child.signal(libc::SIGTERM);
        wait_for(Duration::from_secs(10), || child.exited().is_some());
    }
    SecondRun {
        refused: status,
        log: fs::read_to_string(&log_path).unwrap_or_default(),
    }
}

#[test]
fn a_second_daemon_on_the_same_pins_is_refused() {
    let (topo, pin, config, mut d) = running(60);
    let clients = topo.clients.clone();
    let before = sweep(&topo, &clients);
    assert_eq!(answered(&before), clients.len(), "{}", d.log_text());
    let first_pid = d.pid().unwrap();

    // Its own control socket, no metrics: nothing but the pins is shared.
    let other = config
        .replace(
            &topo.control_socket().display().to_string(),
            &topo.tmp.join("second.sock").display().to_string(),
        )
        .replace(
            "metrics_listen = \"127.0.0.1:9321\"",
            "metrics_listen = \"off\"",
        );
    assert_ne!(other, config);
    for (args, tag) in [(&[][..], "adopt"), (&["--fresh"][..], "fresh")] {
        let t = Instant::now();
        let second = second_run(&topo, &other, args, tag);
        let after = sweep(&topo, &clients);
        let status = d.status();
        println!(
            "second `stickylb run {}` on the same pin_path: {} after {} ms; then {} of {} clients \
             answered through the VIP (first daemon pid {first_pid}: status {})",
            args.join(" "),
            match second.refused {
                Some(s) => format!("refused ({s})"),
                None => "NOT refused (ran until SIGTERM)".into(),
            },
            t.elapsed().as_millis(),
            answered(&after),
            clients.len(),
            if status.is_ok() { "answers" } else { "fails" },
        );
        if let Some(line) = second.log.lines().find(|l| l.contains("in use")) {
            println!("  its message: {line}");
        }
        assert!(
            second.refused.is_some_and(|s| !s.success()),
            "a second daemon on {} was not refused; log:\n{}",
            pin.0.display(),
            second.log
        );
        assert!(
            second.log.contains(&format!("pid {first_pid}"))
                && second.log.contains(&pin.0.display().to_string()),
            "the refusal should name the pin_path and the holder's pid {first_pid}:\n{}",
            second.log
        );
        assert!(!second.log.contains("adopted"), "{}", second.log);
        assert_eq!(
            after, before,
            "the first daemon's clients after the refusal"
        );
        assert!(xdp_on_lb(&topo), "XDP detached by the refused daemon");
        let status = status.unwrap();
        assert_eq!(status.pid, first_pid);
        assert!(
            status.vips[0]
                .backends
                .iter()
                .all(|b| b.state == BackendState::Up),
            "{status:?}"
        );
    }
    // The refused daemons left the first one's socket alone and removed
    // nothing of their own making.
    assert!(topo.control_socket().exists());
    assert!(!topo.tmp.join("second.sock").exists());

    // The kernel drops a killed daemon's lock: kill -9 never blocks the next.
    d.kill9();
    d.restart(&topo, &[]).unwrap();
    assert!(d.log_text().contains("adopted the running data path"));
    assert_eq!(
        sweep(&topo, &clients),
        before,
        "clients after kill -9 and start"
    );
}

#[test]
fn sigterm_and_start_under_load_loses_no_client() {
    const CLIENTS: usize = 200;
    let (topo, pin, _config, mut d) = running(CLIENTS);
    let clients = topo.clients.clone();
    let before = sweep(&topo, &clients);
    assert_eq!(answered(&before), CLIENTS, "{}", d.log_text());

    // `systemctl restart`: SIGTERM, wait for the exit, start again.
    let load = Load::start(&topo, &clients, Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    d.stop().unwrap();
    let stopped_ms = t.elapsed().as_millis();
    d.restart(&topo, &[]).unwrap();
    let gap_ms = t.elapsed().as_millis();
    assert!(
        d.wait_backends(Duration::from_secs(5), |s, _| s == BackendState::Up),
        "{}",
        d.log_text()
    );
    std::thread::sleep(Duration::from_millis(700));
    let samples = load.finish();
    let s = summarize(&samples, &before, &[]);
    println!(
        "SIGTERM then start under load ({CLIENTS} clients): {} requests, {} failed, {} of \
         {CLIENTS} clients moved; the daemon exited {stopped_ms} ms after SIGTERM and answered \
         again {gap_ms} ms after it",
        s.requests,
        s.failed,
        s.moved.len()
    );
    s.assert_none_failed_or_moved("SIGTERM then start under load");
    assert!(d.log_text().contains("adopted the running data path"));

    // `stickylb stop`: the daemon exits, the data path keeps forwarding.
    let (code, out, err) = d.cli_by_config(&topo, &["stop"]);
    assert_eq!(code, 0, "{out}{err}");
    println!("stickylb stop:\n{out}");
    assert!(out.contains("keeps forwarding"), "{out}");
    d.wait_exit("stickylb stop").unwrap();
    assert_eq!(
        sweep(&topo, &clients),
        before,
        "clients after stickylb stop"
    );
    assert!(xdp_on_lb(&topo) && pin.0.join("link").exists());

    // `stickylb unload` with no daemon running (the pins of an earlier run):
    // detaches and unpins, and says so.
    let out = d.unload(&topo).unwrap();
    println!("stickylb unload (no daemon running):\n{out}");
    for want in [
        "detached the XDP program from eth0",
        &pin.0.display().to_string(),
        "affinity",
        "lose service",
    ] {
        assert!(out.contains(want), "{want:?} not in:\n{out}");
    }
    assert!(!xdp_on_lb(&topo), "XDP still attached after unload");
    assert!(!pin.0.exists(), "pins left after unload");
    let after = sweep(&topo, &clients);
    assert_eq!(answered(&after), 0, "the VIP still answers after unload");
    // Nothing left to unload is no error.
    let (code, out, err) = d.cli_by_config(&topo, &["unload"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("nothing"), "{out}");
}

#[test]
fn the_cli_reaches_the_daemon_whatever_the_file_says() {
    let (topo, pin, config, mut d) = running(20);
    // Each command's exit code, stdout and stderr, shown in one line.
    let run = |d: &Daemon, cmd: &str, what: &str| {
        let (code, out, err) = d.cli_by_config(&topo, &[cmd]);
        let shown = if code == 0 { &out } else { &err };
        println!(
            "stickylb -c FILE {cmd}, {what}: exit {code}: {}",
            shown.lines().next().unwrap_or("")
        );
        (code, out, err)
    };
    let (code, out, err) = run(&d, "status", "file as started");
    assert_eq!(code, 0, "{out}{err}");

    // control_socket changed in the file: a restart-only field, so the
    // daemon still listens on the old one. Then a syntax error in the file.
    let moved = config.replace(
        &topo.control_socket().display().to_string(),
        &topo.tmp.join("elsewhere.sock").display().to_string(),
    );
    assert_ne!(moved, config);
    fs::write(&d.config, &moved).unwrap();
    let moved_status = run(&d, "status", "control_socket changed in the file");
    let moved_reload = run(&d, "reload", "control_socket changed in the file");
    fs::write(&d.config, config.replace("[[vip]]", "[[vip]")).unwrap();
    let broken_status = run(&d, "status", "syntax error in the file");
    let broken_reload = run(&d, "reload", "syntax error in the file");

    for (what, (code, out, err)) in [
        ("control_socket changed", &moved_status),
        ("syntax error", &broken_status),
    ] {
        assert_eq!(*code, 0, "status, {what}: {out}{err}");
        assert!(out.contains("VIP web"), "status, {what}: {out}");
    }
    let (code, out, err) = &moved_reload;
    assert_eq!(*code, 0, "{out}{err}");
    assert!(out.contains("control_socket"), "{out}");
    // The daemon was reached, and refused the file saying why.
    let (code, out, err) = &broken_reload;
    assert_eq!(*code, 1, "{out}{err}");
    assert!(
        err.contains("cannot parse config") && err.contains("line"),
        "{err}"
    );
    assert!(!err.contains("cannot reach"), "{err}");
    assert!(d.status().is_ok(), "the daemon after a refused reload");

    // `unload` finds the daemon and its pins without the file's help.
    let out = d.unload(&topo).unwrap();
    println!("stickylb -c BROKEN unload (daemon running):\n{out}");
    assert!(out.contains("stopped the daemon (pid"), "{out}");
    assert!(!xdp_on_lb(&topo), "XDP still attached after unload");
    assert!(!pin.0.exists(), "pins left after unload");
    assert!(!Path::new(&topo.control_socket()).exists());
}
