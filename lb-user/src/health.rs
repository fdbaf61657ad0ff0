//! Backend health checks.
//!
//! Every backend is probed by its own tokio task ([`spawn`]) so that one slow
//! or dead backend never delays the verdict on another. Raw probe results go
//! through a rise/fall [`Hysteresis`] so that a single lost probe does not pull
//! a backend out of the Maglev table (which would move its clients), and the
//! daemon receives every result as an [`Event`]: all of them for latency
//! display, the ones carrying a [`Transition`] to rewrite the data path.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::fmt::fmt_duration;

/// How a backend is probed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// A TCP connect that completes within the timeout.
    Tcp,
    /// An HTTP/1.0 GET whose status line must carry `expect_status`.
    Http { path: String, expect_status: u16 },
}

impl Probe {
    /// The label used in transition reasons and logs: "tcp" or "http".
    pub fn kind(&self) -> &'static str {
        match self {
            Probe::Tcp => "tcp",
            Probe::Http { .. } => "http",
        }
    }
}

/// How and how often one backend is checked.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckSpec {
    pub probe: Probe,
    /// Mean time between the starts of two probes (each is jittered by ±10%).
    pub interval: Duration,
    /// Bound on one whole probe: connect, and for HTTP the request and status line.
    pub timeout: Duration,
    /// Consecutive passed checks that bring a down backend up.
    pub rise: u32,
    /// Consecutive failed checks that take an up backend down.
    pub fall: u32,
}

/// The result of one probe.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub ok: bool,
    /// Time from the start of the probe to its verdict, failures included.
    pub latency: Duration,
    /// What happened, for people: "connected", "HTTP 503 (want 200)", "connection refused"...
    pub detail: String,
}

/// The health of a backend as the data path should see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum State {
    Up,
    Down,
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            State::Up => "up",
            State::Down => "down",
        })
    }
}

/// A change of state decided by [`Hysteresis`].
#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    pub to: State,
    /// Why, for people: "3 failed tcp checks (connection refused)".
    pub reason: String,
}

/// Turns a stream of probe results into up/down transitions.
#[derive(Clone, Debug)]
pub struct Hysteresis {
    rise: u32,
    fall: u32,
    kind: &'static str,
    state: Option<State>,
    /// Consecutive results that disagree with `state`.
    streak: u32,
}

impl Hysteresis {
    /// `initial`: `Some(state)` when the state is known (e.g. adopted from a
    /// running data path: a restarted daemon must not flap anything), `None`
    /// when unknown: then the first result decides at once (a new backend need
    /// not wait `rise` intervals to take traffic, nor stay up for `fall`
    /// intervals when it is dead). `kind` names the probe in reasons
    /// ([`Probe::kind`]). A threshold of 0 behaves as 1.
    pub fn new(rise: u32, fall: u32, initial: Option<State>, kind: &'static str) -> Self {
        Self {
            rise: rise.max(1),
            fall: fall.max(1),
            kind,
            state: initial,
            streak: 0,
        }
    }

    /// Feeds one result; returns `Some(transition)` when the state changes.
    pub fn observe(&mut self, outcome: &Outcome) -> Option<Transition> {
        let verdict = if outcome.ok { "passed" } else { "failed" };
        let Some(state) = self.state else {
            let to = if outcome.ok { State::Up } else { State::Down };
            self.state = Some(to);
            self.streak = 0;
            return Some(Transition {
                to,
                reason: format!("first {} check {verdict} ({})", self.kind, outcome.detail),
            });
        };
        let (agrees, threshold, to) = match state {
            State::Up => (outcome.ok, self.fall, State::Down),
            State::Down => (!outcome.ok, self.rise, State::Up),
        };
        if agrees {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        if self.streak < threshold {
            return None;
        }
        let count = self.streak;
        self.state = Some(to);
        self.streak = 0;
        let plural = if count == 1 { "" } else { "s" };
        Some(Transition {
            to,
            reason: format!(
                "{count} {verdict} {} check{plural} ({})",
                self.kind, outcome.detail
            ),
        })
    }

    pub fn state(&self) -> Option<State> {
        self.state
    }
}

/// One probe result of one backend, as sent to the daemon.
#[derive(Clone, Debug)]
pub struct Event<K> {
    pub key: K,
    pub outcome: Outcome,
    pub transition: Option<Transition>,
    /// The state after this result.
    pub state: Option<State>,
}

/// Owns a checker task: dropping it stops the checks.
#[derive(Debug)]
#[must_use = "dropping the handle stops the checker at once"]
pub struct CheckerHandle {
    task: JoinHandle<()>,
}

impl CheckerHandle {
    /// True once the task has stopped: aborted, or its receiver closed.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

impl Drop for CheckerHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Spawns the checker task of one backend; it runs until the returned handle
/// is dropped or the receiver is closed. A full channel makes the checker wait
/// rather than drop results, so a transition is never lost.
pub fn spawn<K: Clone + Send + 'static>(
    key: K,
    target: SocketAddr,
    spec: CheckSpec,
    initial: Option<State>,
    tx: mpsc::Sender<Event<K>>,
) -> CheckerHandle {
    CheckerHandle {
        task: tokio::spawn(run(key, target, spec, initial, tx)),
    }
}

async fn run<K: Clone>(
    key: K,
    target: SocketAddr,
    spec: CheckSpec,
    initial: Option<State>,
    tx: mpsc::Sender<Event<K>>,
) {
    let mut hysteresis = Hysteresis::new(spec.rise, spec.fall, initial, spec.probe.kind());
    let mut next = Instant::now() + first_delay(spec.interval);
    loop {
        // Waiting on `closed()` too: a daemon that drops its receiver should not
        // have to wait up to an interval (or a timeout) for its checkers to go.
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            () = tx.closed() => return,
        }
        let started = Instant::now();
        // Scheduled from the start of the probe so that the cadence does not drift
        // by the latency; a probe that overruns only delays the next, never overlaps it.
        next = started + jittered(spec.interval);
        let outcome = tokio::select! {
            outcome = probe_once(target, &spec.probe, spec.timeout) => outcome,
            () = tx.closed() => return,
        };
        let transition = hysteresis.observe(&outcome);
        let event = Event {
            key: key.clone(),
            outcome,
            transition,
            state: hysteresis.state(),
        };
        if tx.send(event).await.is_err() {
            return;
        }
    }
}

/// Spreads the first probes of many backends over up to 100ms: soon enough that
/// a fresh daemon learns every state quickly, spread enough that they do not
/// all connect at the same instant.
fn first_delay(interval: Duration) -> Duration {
    let cap = interval.min(Duration::from_millis(100));
    cap.mul_f64(fastrand::f64())
}

/// `interval` ± 10%, so that checkers started together drift apart.
fn jittered(interval: Duration) -> Duration {
    interval.mul_f64(0.9 + 0.2 * fastrand::f64())
}

/// Probes `target` once; never takes (much) longer than `timeout`.
pub async fn probe_once(target: SocketAddr, probe: &Probe, timeout: Duration) -> Outcome {
    let started = Instant::now();
    let result = tokio::time::timeout(timeout, async {
        let stream = TcpStream::connect(target)
            .await
            .map_err(|e| io_detail(&e))?;
        match probe {
            Probe::Tcp => Ok("connected".to_owned()),
            Probe::Http {
                path,
                expect_status,
            } => http_exchange(stream, target, path, *expect_status).await,
        }
    })
    .await;
    let latency = started.elapsed();
    let (ok, detail) = match result {
        Ok(Ok(detail)) => (true, detail),
        Ok(Err(detail)) => (false, detail),
        Err(_) => (false, format!("timed out after {}", fmt_duration(timeout))),
    };
    Outcome {
        ok,
        latency,
        detail,
    }
}

/// A status line longer than this is not one: stop reading rather than buffer
/// whatever a confused backend streams at us.
const MAX_STATUS_LINE: usize = 1024;

/// Sends the request and reads the status line; the rest of the response is
/// not wanted, so the connection is simply dropped.
async fn http_exchange(
    mut stream: TcpStream,
    target: SocketAddr,
    path: &str,
    expect_status: u16,
) -> Result<String, String> {
    let host = match target {
        SocketAddr::V4(a) => format!("{}:{}", a.ip(), a.port()),
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    };
    let request = format!(
        "GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: stickylb-health\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| io_detail(&e))?;

    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    let line_end = loop {
        if let Some(end) = buf.iter().position(|&b| b == b'\n') {
            break end;
        }
        if buf.len() >= MAX_STATUS_LINE {
            return Err("malformed HTTP response".to_owned());
        }
        let n = stream.read(&mut chunk).await.map_err(|e| io_detail(&e))?;
        if n == 0 {
            if buf.is_empty() {
                return Err("connection closed without a response".to_owned());
            }
            // Lenient: a server that closes right after an unterminated status line still answered.
            break buf.len();
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let status =
        parse_status_line(&buf[..line_end]).ok_or_else(|| "malformed HTTP response".to_owned())?;
    if status == expect_status {
        Ok(format!("HTTP {status}"))
    } else {
        Err(format!("HTTP {status} (want {expect_status})"))
    }
}

/// "HTTP/1.1 200 OK" → 200. The reason phrase is optional (RFC 9112 allows it
/// empty) and may hold any byte but CR/LF, so the line is read as bytes, not
/// as UTF-8.
fn parse_status_line(line: &[u8]) -> Option<u16> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let space = line.iter().position(|&b| b == b' ')?;
    let (version, rest) = (&line[..space], &line[space + 1..]);
    if version.len() <= b"HTTP/".len() || !version.starts_with(b"HTTP/") {
        return None;
    }
    let code = rest.get(..3)?;
    if !code.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if !matches!(rest.get(3), None | Some(b' ')) {
        return None;
    }
    Some(code.iter().fold(0, |n, d| n * 10 + u16::from(d - b'0')))
}

/// The words people know from the shell ("connection refused", "no route to
/// host") rather than Rust's ("host unreachable") or the raw "(os error 113)".
fn io_detail(e: &io::Error) -> String {
    use io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused => "connection refused".to_owned(),
        K::ConnectionReset => "connection reset by peer".to_owned(),
        K::ConnectionAborted => "connection aborted".to_owned(),
        K::HostUnreachable => "no route to host".to_owned(),
        K::NetworkUnreachable => "network unreachable".to_owned(),
        K::AddrNotAvailable => "address not available".to_owned(),
        K::BrokenPipe => "broken pipe".to_owned(),
        K::TimedOut => "timed out".to_owned(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use tokio::net::TcpListener;
    use tokio::sync::oneshot;
    use tokio::time::timeout;

    fn result(ok: bool, detail: &str) -> Outcome {
        Outcome {
            ok,
            latency: Duration::from_millis(1),
            detail: detail.to_owned(),
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
}
