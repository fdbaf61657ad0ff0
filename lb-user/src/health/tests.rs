//! Probes against local listeners, hysteresis, and the checker task.

use super::*;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::time::timeout;

fn result(ok: bool, detail: &str) -> Outcome {
    Outcome {
        ok,
        latency: Duration::from_millis(1),
        detail: detail.to_owned(),
        local: false,
    }
}

fn pass() -> Outcome {
    result(true, "connected")
}

fn fail() -> Outcome {
    result(false, "connection refused")
}

fn to(h: &mut Hysteresis, o: Outcome) -> Option<State> {
    h.observe(&o).map(|t| t.to)
}

// ---- Hysteresis ----

#[test]
fn unknown_state_is_decided_by_the_first_result() {
    let mut h = Hysteresis::new(3, 3, None, "tcp");
    assert_eq!(h.state(), None);
    let t = h.observe(&pass()).unwrap();
    assert_eq!(t.to, State::Up);
    assert_eq!(t.reason, "first tcp check passed (connected)");
    assert_eq!(h.state(), Some(State::Up));

    let mut h = Hysteresis::new(3, 3, None, "http");
    let t = h.observe(&result(false, "HTTP 503 (want 200)")).unwrap();
    assert_eq!(t.to, State::Down);
    assert_eq!(t.reason, "first http check failed (HTTP 503 (want 200))");
    assert_eq!(h.state(), Some(State::Down));
}

#[test]
fn up_goes_down_after_fall_consecutive_failures() {
    let mut h = Hysteresis::new(2, 3, Some(State::Up), "tcp");
    assert_eq!(to(&mut h, fail()), None);
    assert_eq!(to(&mut h, fail()), None);
    let t = h.observe(&fail()).unwrap();
    assert_eq!(
        t,
        Transition {
            to: State::Down,
            reason: "3 failed tcp checks (connection refused)".to_owned()
        }
    );
    assert_eq!(h.state(), Some(State::Down));
    // Further failures confirm, they do not transition again.
    assert_eq!(to(&mut h, fail()), None);
}

#[test]
fn down_goes_up_after_rise_consecutive_successes() {
    let mut h = Hysteresis::new(2, 3, Some(State::Down), "http");
    assert_eq!(to(&mut h, result(true, "HTTP 200")), None);
    let t = h.observe(&result(true, "HTTP 200")).unwrap();
    assert_eq!(t.to, State::Up);
    assert_eq!(t.reason, "2 passed http checks (HTTP 200)");
    assert_eq!(to(&mut h, result(true, "HTTP 200")), None);
}

#[test]
fn flapping_never_reaches_a_threshold() {
    let mut up = Hysteresis::new(2, 2, Some(State::Up), "tcp");
    let mut down = Hysteresis::new(2, 2, Some(State::Down), "tcp");
    for _ in 0..10 {
        assert_eq!(to(&mut up, fail()), None);
        assert_eq!(to(&mut up, pass()), None);
        assert_eq!(to(&mut down, pass()), None);
        assert_eq!(to(&mut down, fail()), None);
    }
    assert_eq!(up.state(), Some(State::Up));
    assert_eq!(down.state(), Some(State::Down));
}

#[test]
fn known_initial_state_is_kept_until_the_threshold() {
    // An adopted Up must survive fewer than `fall` failures, even the very first.
    let mut h = Hysteresis::new(5, 4, Some(State::Up), "tcp");
    for _ in 0..3 {
        assert_eq!(to(&mut h, fail()), None);
        assert_eq!(h.state(), Some(State::Up));
    }
    assert_eq!(to(&mut h, fail()), Some(State::Down));

    let mut h = Hysteresis::new(5, 4, Some(State::Down), "tcp");
    for _ in 0..4 {
        assert_eq!(to(&mut h, pass()), None);
    }
    assert_eq!(to(&mut h, pass()), Some(State::Up));
}

#[test]
fn threshold_of_one_flips_at_once_with_a_singular_reason() {
    let mut h = Hysteresis::new(0, 1, Some(State::Up), "tcp");
    let t = h.observe(&fail()).unwrap();
    assert_eq!(t.reason, "1 failed tcp check (connection refused)");
    assert_eq!(to(&mut h, pass()), Some(State::Up));
}

#[test]
fn the_streak_restarts_after_a_transition() {
    let mut h = Hysteresis::new(2, 2, None, "tcp");
    assert_eq!(to(&mut h, pass()), Some(State::Up));
    assert_eq!(to(&mut h, fail()), None);
    assert_eq!(to(&mut h, fail()), Some(State::Down));
    assert_eq!(to(&mut h, pass()), None);
    assert_eq!(to(&mut h, pass()), Some(State::Up));
}

// ---- pure helpers ----

#[test]
fn status_lines() {
    let cases: &[(&[u8], Option<u16>)] = &[
        (b"HTTP/1.0 200 OK\r", Some(200)),
        (b"HTTP/1.1 200 Gr\xfc\xdf Gott", Some(200)),
        (b"HTTP/1.1 503 Service Unavailable", Some(503)),
        (b"HTTP/1.1 204", Some(204)),
        (b"HTTP/1.1 404 \r", Some(404)),
        (b"HTTP/1.1 20 OK", None),
        (b"HTTP/1.1 2000 OK", None),
        (b"HTTP/1.1 2x0 OK", None),
        (b"HTTP/ 200 OK", None),
        (b"http/1.1 200 OK", None),
        (b"SSH-2.0-OpenSSH_9.6", None),
        (b"", None),
    ];
    for &(line, want) in cases {
        assert_eq!(
            parse_status_line(line),
            want,
            "{:?}",
            String::from_utf8_lossy(line)
        );
    }
}

#[test]
fn schedule_stays_within_its_bounds() {
    let interval = Duration::from_secs(1);
    for _ in 0..1000 {
        let j = jittered(interval);
        assert!(j >= Duration::from_millis(900) && j <= Duration::from_millis(1100));
        assert!(first_delay(interval) < Duration::from_millis(100));
        assert!(first_delay(Duration::from_millis(20)) < Duration::from_millis(20));
    }
    assert_eq!(first_delay(Duration::ZERO), Duration::ZERO);
}

// ---- probe_once against real sockets on 127.0.0.1 ----

const TIMEOUT: Duration = Duration::from_millis(500);

async fn listener() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    (l, addr)
}

/// A one-shot HTTP server: reads the request head, answers `response`,
/// closes, and hands back what it was sent.
async fn http_server(response: &'static str) -> (SocketAddr, oneshot::Receiver<String>) {
    let (l, addr) = listener().await;
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut req = Vec::new();
        let mut chunk = [0u8; 512];
        while !req.ends_with(b"\r\n\r\n") {
            let n = s.read(&mut chunk).await.unwrap();
            if n == 0 {
                break;
            }
            req.extend_from_slice(&chunk[..n]);
        }
        s.write_all(response.as_bytes()).await.unwrap();
        let _ = tx.send(String::from_utf8(req).unwrap());
    });
    (addr, rx)
}

fn http(path: &str, expect_status: u16) -> Probe {
    Probe::Http {
        path: path.to_owned(),
        expect_status,
    }
}

#[tokio::test]
async fn tcp_probe_connects() {
    let (_l, addr) = listener().await;
    let o = probe_once(addr, &Probe::Tcp, TIMEOUT).await;
    assert!(o.ok, "{o:?}");
    assert_eq!(o.detail, "connected");
    assert!(o.latency < TIMEOUT);
}

#[tokio::test]
async fn tcp_probe_to_a_closed_port_is_refused() {
    let (l, addr) = listener().await;
    drop(l);
    let o = probe_once(addr, &Probe::Tcp, TIMEOUT).await;
    assert!(!o.ok);
    assert_eq!(o.detail, "connection refused");
}

#[tokio::test]
async fn http_probe_passes_on_the_expected_status_and_sends_a_proper_request() {
    let (addr, request) = http_server("HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    let o = probe_once(addr, &http("/healthz", 200), TIMEOUT).await;
    assert!(o.ok, "{o:?}");
    assert_eq!(o.detail, "HTTP 200");
    assert_eq!(
        request.await.unwrap(),
        format!(
            "GET /healthz HTTP/1.0\r\nHost: 127.0.0.1:{}\r\nUser-Agent: stickylb-health\r\nConnection: close\r\n\r\n",
            addr.port()
        )
    );
}

#[tokio::test]
async fn http_probe_fails_on_another_status() {
    let (addr, _) = http_server("HTTP/1.1 503 Service Unavailable\r\n\r\n").await;
    let o = probe_once(addr, &http("/", 200), TIMEOUT).await;
    assert!(!o.ok);
    assert_eq!(o.detail, "HTTP 503 (want 200)");
}

#[tokio::test]
async fn http_probe_fails_on_garbage() {
    let (addr, _) = http_server("SSH-2.0-OpenSSH_9.6\r\n").await;
    let o = probe_once(addr, &http("/", 200), TIMEOUT).await;
    assert!(!o.ok);
    assert_eq!(o.detail, "malformed HTTP response");
}

#[tokio::test]
async fn http_probe_fails_when_the_server_closes_without_answering() {
    let (addr, _) = http_server("").await;
    let o = probe_once(addr, &http("/", 200), TIMEOUT).await;
    assert!(!o.ok);
    assert_eq!(o.detail, "connection closed without a response");
}

#[tokio::test]
async fn http_probe_times_out_on_a_silent_server() {
    let (l, addr) = listener().await;
    let server = tokio::spawn(async move {
        let (_s, _) = l.accept().await.unwrap();
        std::future::pending::<()>().await;
    });
    let timeout = Duration::from_millis(200);
    let started = std::time::Instant::now();
    let o = probe_once(addr, &http("/", 200), timeout).await;
    let took = started.elapsed();
    server.abort();
    assert!(!o.ok);
    assert_eq!(o.detail, "timed out after 200ms");
    assert!(
        took >= timeout && took < timeout + Duration::from_millis(300),
        "{took:?}"
    );
}

// ---- spawn ----

fn tcp_spec(interval_ms: u64) -> CheckSpec {
    CheckSpec {
        probe: Probe::Tcp,
        interval: Duration::from_millis(interval_ms),
        timeout: Duration::from_millis(200),
        rise: 2,
        fall: 2,
        tunnel: None,
    }
}

/// Keeps accepting (and dropping) connections until aborted.
fn serve(l: TcpListener) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            drop(s);
        }
    })
}

async fn next_event<K>(rx: &mut mpsc::Receiver<Event<K>>) -> Event<K> {
    timeout(Duration::from_secs(1), rx.recv())
        .await
        .expect("no event within 1s")
        .expect("checker stopped")
}

#[tokio::test]
async fn checker_reports_up_then_down_and_stops_with_its_handle() {
    let (l, addr) = listener().await;
    let server = serve(l);
    let (tx, mut rx) = mpsc::channel(16);
    let handle = spawn("web-1", addr, tcp_spec(50), None, tx);

    let first = next_event(&mut rx).await;
    assert_eq!(first.key, "web-1");
    assert!(first.outcome.ok);
    assert_eq!(first.state, Some(State::Up));
    assert_eq!(
        first.transition.unwrap().reason,
        "first tcp check passed (connected)"
    );

    // Awaiting the aborted task makes sure the listener is closed.
    server.abort();
    let _ = server.await;
    let down = loop {
        let e = next_event(&mut rx).await;
        if let Some(t) = e.transition {
            break t;
        }
    };
    assert_eq!(down.to, State::Down);
    assert_eq!(down.reason, "2 failed tcp checks (connection refused)");

    drop(handle);
    while rx.try_recv().is_ok() {}
    match timeout(Duration::from_millis(300), rx.recv()).await {
        Ok(None) | Err(_) => {}
        Ok(Some(e)) => panic!("event after the handle was dropped: {e:?}"),
    }
}

#[tokio::test]
async fn first_probe_comes_quickly_even_with_a_long_interval() {
    let (l, addr) = listener().await;
    let (tx, mut rx) = mpsc::channel(4);
    let started = Instant::now();
    let _handle = spawn(0u32, addr, tcp_spec(10_000), Some(State::Up), tx);
    let e = timeout(Duration::from_millis(400), rx.recv())
        .await
        .expect("first probe later than 400ms")
        .unwrap();
    assert!(started.elapsed() < Duration::from_millis(400));
    // The adopted state is kept: no transition to announce.
    assert!(e.transition.is_none());
    assert_eq!(e.state, Some(State::Up));
    drop(l);
}

#[tokio::test]
async fn slow_probes_do_not_overlap() {
    let (l, addr) = listener().await;
    // Accepts and never answers, so every HTTP probe runs into its timeout.
    let server = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    let spec = CheckSpec {
        probe: http("/", 200),
        interval: Duration::from_millis(50),
        timeout: Duration::from_millis(250),
        rise: 1,
        fall: 1,
        tunnel: None,
    };
    let (tx, mut rx) = mpsc::channel(16);
    let _handle = spawn((), addr, spec, None, tx);
    let mut at = Vec::new();
    for _ in 0..3 {
        let e = next_event(&mut rx).await;
        assert!(e.outcome.detail.starts_with("timed out after"), "{e:?}");
        at.push(Instant::now());
    }
    for w in at.windows(2) {
        assert!(
            w[1] - w[0] >= Duration::from_millis(200),
            "{:?}",
            w[1] - w[0]
        );
    }
    server.abort();
}

#[tokio::test]
async fn checker_stops_when_the_receiver_is_closed() {
    let (l, addr) = listener().await;
    let (tx, rx) = mpsc::channel(4);
    let handle = spawn((), addr, tcp_spec(10_000), None, tx);
    drop(rx);
    let deadline = Instant::now() + Duration::from_millis(500);
    while !handle.is_finished() {
        assert!(Instant::now() < deadline, "checker still running");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(l);
}

// ---- A check and its tunnel probe together ----

fn local(detail: &str) -> Outcome {
    Outcome {
        local: true,
        ..result(false, detail)
    }
}

#[test]
fn a_check_with_its_tunnel_probe_passes_only_when_both_pass_and_says_which_failed() {
    let tunnel_ok = result(true, "SYN-ACK through the ipip tunnel to 192.0.2.10:80");
    let tunnel_rst = result(
        false,
        "RST through the ipip tunnel to 192.0.2.10:80: nothing listens",
    );
    let both = combine(pass(), tunnel_ok.clone());
    assert!(both.ok && !both.local, "{both:?}");
    assert_eq!(
        both.detail,
        "connected; SYN-ACK through the ipip tunnel to 192.0.2.10:80"
    );
    let o = combine(fail(), tunnel_ok.clone());
    assert!(!o.ok && !o.local, "{o:?}");
    assert_eq!(
        o.detail,
        "connection refused (the tunnel probe passed: SYN-ACK through the ipip tunnel to \
         192.0.2.10:80)"
    );
    let o = combine(pass(), tunnel_rst.clone());
    assert!(!o.ok && !o.local, "{o:?}");
    assert_eq!(
        o.detail,
        "RST through the ipip tunnel to 192.0.2.10:80: nothing listens (the check of its own \
         address passed: connected)"
    );
    let o = combine(fail(), tunnel_rst);
    assert!(!o.ok && !o.local, "{o:?}");
    assert_eq!(
        o.detail,
        "connection refused; RST through the ipip tunnel to 192.0.2.10:80: nothing listens"
    );
    // The slower of the two is the check's latency.
    let slow = Outcome {
        latency: Duration::from_millis(40),
        ..tunnel_ok
    };
    assert_eq!(combine(pass(), slow).latency, Duration::from_millis(40));
}

#[test]
fn a_local_error_of_either_half_blames_the_backend_only_if_the_other_does() {
    let cap = "cannot open a raw socket (needs CAP_NET_RAW)";
    let o = combine(pass(), local(cap));
    assert!(!o.ok && o.local, "nothing is known of the backend: {o:?}");
    let o = combine(local("Too many open files"), result(true, "SYN-ACK"));
    assert!(!o.ok && o.local, "{o:?}");
    assert!(combine(local("a"), local("b")).local);
    // The backend failed one half for a reason of its own: that counts.
    let o = combine(fail(), local(cap));
    assert!(!o.ok && !o.local, "{o:?}");
    let o = combine(local("Too many open files"), result(false, "RST"));
    assert!(!o.ok && !o.local, "{o:?}");
}
