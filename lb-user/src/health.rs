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
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use log::error;

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
    /// A datagram whose reply must arrive within the timeout (and hold
    /// `expect`, if set); an ICMP port unreachable fails at once.
    Udp {
        payload: Vec<u8>,
        expect: Option<Vec<u8>>,
    },
    /// A command (program and arguments, no shell) that must exit with 0.
    Exec { command: Vec<String> },
}

impl Probe {
    /// The label used in transition reasons and logs: "tcp", "http", "udp"
    /// or "exec".
    pub fn kind(&self) -> &'static str {
        match self {
            Probe::Tcp => "tcp",
            Probe::Http { .. } => "http",
            Probe::Udp { .. } => "udp",
            Probe::Exec { .. } => "exec",
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
    /// A probe through the tunnel to the VIP, made with every check (at
    /// the same time, within the same timeout) in the tunnel modes: both
    /// must pass. `None`: the check alone decides.
    pub tunnel: Option<TunnelProbe>,
}

/// The result of one probe.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub ok: bool,
    /// Time from the start of the probe to its verdict, failures included.
    pub latency: Duration,
    /// What happened, for people: "connected", "HTTP 503 (want 200)", "connection refused"...
    pub detail: String,
    /// The probe could not be made for a reason of this host's (out of file
    /// descriptors, memory, buffers or local ports): it says nothing about
    /// the backend, so it must not count for or against it.
    pub local: bool,
}

impl Outcome {
    /// True when the probe failed for a reason of this host's, not the
    /// backend's (see `local`).
    pub fn is_local_error(&self) -> bool {
        self.local
    }
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
    /// The supervisor, which owns the checker proper.
    task: JoinHandle<()>,
    restarts: Arc<AtomicU64>,
}

impl CheckerHandle {
    /// True once the task has stopped: aborted, or its receiver closed.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// How many times the checker died (panicked or ended) and was started
    /// again.
    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }
}

impl Drop for CheckerHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A future that can be sent to a task.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// How a checker probes its target once: [`real_probe`] but in tests, which
/// give one that can fail in ways a real target cannot make it fail.
pub type ProbeFn = Arc<dyn Fn(SocketAddr, &Probe, Duration) -> BoxFuture<Outcome> + Send + Sync>;

/// [`probe_once`], as a checker calls it.
pub fn real_probe() -> ProbeFn {
    Arc::new(|target, probe, timeout| {
        let probe = probe.clone();
        Box::pin(async move { probe_once(target, &probe, timeout).await })
    })
}

/// Spawns the checker task of one backend, named by its target in logs;
/// see [`spawn_with`].
pub fn spawn<K: Clone + Send + 'static>(
    key: K,
    target: SocketAddr,
    spec: CheckSpec,
    initial: Option<State>,
    tx: mpsc::Sender<Event<K>>,
) -> CheckerHandle {
    spawn_with(
        key,
        target.to_string(),
        target,
        spec,
        initial,
        tx,
        real_probe(),
    )
}

/// Spawns the checker task of one backend (`label` names it in logs); it
/// runs until the returned handle is dropped or the receiver is closed. A
/// full channel makes the checker wait rather than drop results, so a
/// transition is never lost. A checker that panics or ends is logged,
/// counted ([`CheckerHandle::restarts`]) and started again after a short
/// backoff, from the state it had reached: a backend is never left
/// unwatched, nor flapped by the restart.
pub fn spawn_with<K: Clone + Send + 'static>(
    key: K,
    label: String,
    target: SocketAddr,
    spec: CheckSpec,
    initial: Option<State>,
    tx: mpsc::Sender<Event<K>>,
    probe: ProbeFn,
) -> CheckerHandle {
    let restarts = Arc::new(AtomicU64::new(0));
    let checker = Checker {
        key,
        target,
        spec,
        state: Arc::new(Mutex::new(initial)),
        tx,
        probe,
    };
    CheckerHandle {
        task: tokio::spawn(supervise(checker, label, restarts.clone())),
        restarts,
    }
}

/// The first wait before restarting a dead checker; doubled at each death
/// in a row, up to `MAX_BACKOFF`.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A checker that ran this long before it died starts again from
/// `MIN_BACKOFF`: its death is not part of a crash loop.
const STABLE_RUN: Duration = Duration::from_secs(30);

/// What a checker needs, kept by its supervisor to start it again.
struct Checker<K> {
    key: K,
    target: SocketAddr,
    spec: CheckSpec,
    /// The state reached so far, which a restarted checker starts from.
    state: Arc<Mutex<Option<State>>>,
    tx: mpsc::Sender<Event<K>>,
    probe: ProbeFn,
}

/// Aborts the task when dropped: when the supervisor is aborted, so is
/// the checker it runs.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn supervise<K: Clone + Send + 'static>(
    c: Checker<K>,
    label: String,
    restarts: Arc<AtomicU64>,
) {
    let mut backoff = MIN_BACKOFF;
    loop {
        let started = Instant::now();
        let initial = *c.state.lock().unwrap_or_else(PoisonError::into_inner);
        let mut task = AbortOnDrop(tokio::spawn(run(
            c.key.clone(),
            c.target,
            c.spec.clone(),
            initial,
            c.tx.clone(),
            c.probe.clone(),
            c.state.clone(),
        )));
        let ended = (&mut task.0).await;
        if c.tx.is_closed() {
            // The daemon let go of its checkers: this is how they stop.
            return;
        }
        let why = match ended {
            Ok(()) => "ended".to_owned(),
            Err(e) if e.is_panic() => format!("panicked ({})", panic_message(e.into_panic())),
            Err(_) => "was cancelled".to_owned(),
        };
        let n = restarts.fetch_add(1, Ordering::Relaxed) + 1;
        if started.elapsed() >= STABLE_RUN {
            backoff = MIN_BACKOFF;
        }
        error!(
            "health checker of {label} {why}; restarting it in {} ({n} restarts so far); \
             this is a bug in stickylb, please report it",
            fmt_duration(backoff)
        );
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = c.tx.closed() => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => match payload.downcast::<&'static str>() {
            Ok(s) => (*s).to_owned(),
            Err(_) => "no message".to_owned(),
        },
    }
}

async fn run<K: Clone>(
    key: K,
    target: SocketAddr,
    spec: CheckSpec,
    initial: Option<State>,
    tx: mpsc::Sender<Event<K>>,
    probe: ProbeFn,
    reached: Arc<Mutex<Option<State>>>,
) {
    let mut hysteresis = Hysteresis::new(spec.rise, spec.fall, initial, spec.probe.kind());
    let mut next = later(Instant::now(), first_delay(spec.interval));
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
        next = later(started, jittered(spec.interval));
        let outcome = tokio::select! {
            outcome = check_once(target, &spec, &probe) => outcome,
            () = tx.closed() => return,
        };
        // A local error says nothing about the backend: it neither feeds
        // nor breaks a streak.
        let transition = if outcome.is_local_error() {
            None
        } else {
            hysteresis.observe(&outcome)
        };
        let event = Event {
            key: key.clone(),
            outcome,
            transition,
            state: hysteresis.state(),
        };
        if tx.send(event).await.is_err() {
            return;
        }
        *reached.lock().unwrap_or_else(PoisonError::into_inner) = hysteresis.state();
    }
}

/// One check of `spec`: its probe of `target` and, if it has one, its
/// probe through the tunnel, run at the same time.
async fn check_once(target: SocketAddr, spec: &CheckSpec, probe: &ProbeFn) -> Outcome {
    let check = probe(target, &spec.probe, spec.timeout);
    match &spec.tunnel {
        None => check.await,
        Some(tunnel) => {
            let (check, tunnel) = tokio::join!(check, tunnel.probe(spec.timeout));
            combine(check, tunnel)
        }
    }
}

/// The verdict of a check and a tunnel probe made together: passed when
/// both passed; the detail says which failed. A local error of one decides
/// nothing unless the other failed for the backend's reason.
pub fn combine(check: Outcome, tunnel: Outcome) -> Outcome {
    let latency = check.latency.max(tunnel.latency);
    let (ok, local, detail) = match (check.ok, tunnel.ok) {
        (true, true) => (true, false, format!("{}; {}", check.detail, tunnel.detail)),
        (false, true) => (
            false,
            check.local,
            format!(
                "{} (the tunnel probe passed: {})",
                check.detail, tunnel.detail
            ),
        ),
        (true, false) => (
            false,
            tunnel.local,
            format!(
                "{} (the check of its own address passed: {})",
                tunnel.detail, check.detail
            ),
        ),
        (false, false) => (
            false,
            check.local && tunnel.local,
            format!("{}; {}", check.detail, tunnel.detail),
        ),
    };
    Outcome {
        ok,
        latency,
        detail,
        local,
    }
}

/// `at + d`, or as far ahead as the timer goes: validation bounds every
/// interval, but no value may make a checker panic.
fn later(at: Instant, d: Duration) -> Instant {
    at.checked_add(d).unwrap_or_else(far_future)
}

/// About 30 years ahead: what tokio itself uses for a sleep without end.
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365 * 30)
}

/// Spreads the first probes of many backends over up to 100ms: soon enough that
/// a fresh daemon learns every state quickly, spread enough that they do not
/// all connect at the same instant.
fn first_delay(interval: Duration) -> Duration {
    FIRST_PROBE_SPREAD.min(interval).mul_f64(fastrand::f64())
}

/// The most a first probe waits (see `first_delay`).
pub const FIRST_PROBE_SPREAD: Duration = Duration::from_millis(100);

/// By when a new checker's first result is in: its first probe starts
/// within `first_delay` and ends within `timeout`.
pub fn first_result_within(interval: Duration, timeout: Duration) -> Duration {
    FIRST_PROBE_SPREAD.min(interval).saturating_add(timeout)
}

/// `interval` ± 10%, so that checkers started together drift apart (the
/// interval itself if that is not a duration: never a panic).
fn jittered(interval: Duration) -> Duration {
    Duration::try_from_secs_f64(interval.as_secs_f64() * (0.9 + 0.2 * fastrand::f64()))
        .unwrap_or(interval)
}

/// Probes `target` once; never takes (much) longer than `timeout`.
pub async fn probe_once(target: SocketAddr, probe: &Probe, timeout: Duration) -> Outcome {
    let started = Instant::now();
    let result = tokio::time::timeout(timeout, async {
        match probe {
            Probe::Tcp => {
                TcpStream::connect(target).await.map_err(io_failure)?;
                Ok("connected".to_owned())
            }
            Probe::Http {
                path,
                expect_status,
            } => {
                let stream = TcpStream::connect(target).await.map_err(io_failure)?;
                http_exchange(stream, target, path, *expect_status).await
            }
            Probe::Udp { payload, expect } => {
                udp::exchange(target, payload, expect.as_deref()).await
            }
            Probe::Exec { command } => exec::run(command, target).await,
        }
    })
    .await;
    let latency = started.elapsed();
    let (ok, local, detail) = match result {
        Ok(Ok(detail)) => (true, false, detail),
        Ok(Err(f)) => (false, f.local, f.detail),
        Err(_) => (
            false,
            false,
            format!("timed out after {}", fmt_duration(timeout)),
        ),
    };
    Outcome {
        ok,
        latency,
        detail,
        local,
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
) -> Result<String, Failure> {
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
        .map_err(io_failure)?;

    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    let line_end = loop {
        if let Some(end) = buf.iter().position(|&b| b == b'\n') {
            break end;
        }
        if buf.len() >= MAX_STATUS_LINE {
            return Err("malformed HTTP response".into());
        }
        let n = stream.read(&mut chunk).await.map_err(io_failure)?;
        if n == 0 {
            if buf.is_empty() {
                return Err("connection closed without a response".into());
            }
            // Lenient: a server that closes right after an unterminated status line still answered.
            break buf.len();
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let status = parse_status_line(&buf[..line_end]).ok_or("malformed HTTP response")?;
    if status == expect_status {
        Ok(format!("HTTP {status}"))
    } else {
        Err(format!("HTTP {status} (want {expect_status})").into())
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

mod exec;
mod failure;
pub mod tunnel;
mod udp;

pub use tunnel::{Encap, TunnelCheck, TunnelProbe};

use failure::{Failure, io_failure};

#[cfg(test)]
mod supervision_tests;
#[cfg(test)]
mod tests;
