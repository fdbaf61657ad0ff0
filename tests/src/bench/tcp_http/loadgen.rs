//! A small closed-loop HTTP/1.1 load generator: a fixed number of
//! connections, each bound to its own source address (many client addresses
//! are what source-address stickiness needs; wrk sends from one), each with
//! one request in flight. epoll, non-blocking sockets, a few threads, so the
//! client costs about what wrk costs per request.
//!
//! Two modes: keep-alive (one connection per slot, requests back to back)
//! and a new connection per request (connect, GET, read the answer, close:
//! the client closes first, so its TIME_WAIT stays on the client).
//!
//! Latency of a request: from writing the request (keep-alive) or from
//! `connect()` (new connection) until the whole answer (head and
//! Content-Length bytes of body) has been read.

use std::{
    fs,
    io::{self, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::{AsRawFd as _, RawFd},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU8, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

pub const WARMUP: u8 = 0;
pub const MEASURE: u8 = 1;
pub const STOP: u8 = 2;

/// A request that keeps the connection open.
const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: bench\r\nUser-Agent: slb-bench\r\n\r\n";
/// A request or connection stuck this long is an error and is retried.
const STUCK: Duration = Duration::from_secs(2);
/// Backends are told apart by their body, `backend-<n>`.
pub const MAX_BACKENDS: usize = 16;

#[derive(Clone, Debug)]
pub struct Spec {
    pub target: SocketAddrV4,
    /// Source addresses (local addresses of the namespace).
    pub sources: Vec<Ipv4Addr>,
    /// Concurrent connections; connection k is bound to `sources[k % len]`.
    pub conns: usize,
    pub new_conn: bool,
    pub threads: usize,
}

/// What a run got. Counts are of the MEASURE phase only, except
/// `backend_sets`, which covers the whole run.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub requests: u64,
    pub errors: u64,
    /// Keep-alive connections the server closed between requests (reopened;
    /// not an error, the request is sent again on a new connection).
    pub server_closes: u64,
    pub connects: u64,
    pub latencies_us: Vec<u32>,
    pub per_backend: [u64; MAX_BACKENDS],
    /// Per source address: bitmask of the backends that answered it.
    pub backend_sets: Vec<u32>,
    /// First error text seen, for the report.
    pub first_error: Option<String>,
}

impl Outcome {
    pub fn merge(&mut self, o: Outcome) {
        self.requests += o.requests;
        self.errors += o.errors;
        self.server_closes += o.server_closes;
        self.connects += o.connects;
        self.latencies_us.extend(o.latencies_us);
        for (a, b) in self.per_backend.iter_mut().zip(o.per_backend) {
            *a += b;
        }
        if self.backend_sets.len() < o.backend_sets.len() {
            self.backend_sets.resize(o.backend_sets.len(), 0);
        }
        for (a, b) in self.backend_sets.iter_mut().zip(o.backend_sets) {
            *a |= b;
        }
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
    }

    /// Latency percentile `p` (0..=100) in milliseconds; sorts in place.
    pub fn percentile_ms(&mut self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        self.latencies_us.sort_unstable();
        let n = self.latencies_us.len();
        let rank = ((p / 100.0) * n as f64).ceil() as usize;
        self.latencies_us[rank.clamp(1, n) - 1] as f64 / 1000.0
    }

    /// Source addresses answered by more than one backend.
    pub fn unsticky_sources(&self) -> usize {
        self.backend_sets
            .iter()
            .filter(|s| s.count_ones() > 1)
            .count()
    }
}

/// A running load: worker threads in a namespace, driven by the phase flag.
pub struct Load {
    phase: Arc<AtomicU8>,
    workers: Vec<JoinHandle<Result<Outcome, String>>>,
}

impl Load {
    /// Starts `spec.threads` workers in the namespace at `netns` (warm-up
    /// phase: requests flow but are not counted).
    pub fn start(netns: PathBuf, spec: &Spec) -> Self {
        let phase = Arc::new(AtomicU8::new(WARMUP));
        let threads = spec.threads.max(1);
        let workers = (0..threads)
            .map(|t| {
                let ids: Vec<usize> = (t..spec.conns).step_by(threads).collect();
                let spec = spec.clone();
                let phase = phase.clone();
                let netns = netns.clone();
                thread::spawn(move || {
                    let f =
                        fs::File::open(&netns).map_err(|e| format!("{}: {e}", netns.display()))?;
                    // SAFETY: a valid netns fd; setns affects this thread only.
                    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        return Err(format!("setns: {}", io::Error::last_os_error()));
                    }
                    Worker::new(&spec, &ids)?.run(&phase)
                })
            })
            .collect();
        Self { phase, workers }
    }

    /// Starts counting.
    pub fn measure(&self) {
        self.phase.store(MEASURE, Ordering::Release);
    }

    /// Stops counting (and the workers, which end within one poll).
    pub fn stop(&self) {
        self.phase.store(STOP, Ordering::Release);
    }

    /// Stops the workers and merges what they counted.
    pub fn finish(mut self) -> Result<Outcome, String> {
        self.stop();
        let mut out = Outcome::default();
        let mut err = None;
        for w in self.workers.drain(..) {
            match w.join() {
                Ok(Ok(o)) => out.merge(o),
                Ok(Err(e)) => err = Some(e),
                Err(_) => err = Some("load generator thread panicked".into()),
            }
        }
        match err {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        // Also on an early return: the workers stop within one poll.
        self.phase.store(STOP, Ordering::Release);
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    /// No socket; reopen at `retry_at`.
    Closed,
    Connecting,
    /// Request written, reading the answer.
    Reading,
}

struct Conn {
    sock: Option<Socket>,
    src: usize,
    state: State,
    /// When the current request (or connection attempt) started.
    t0: Instant,
    retry_at: Instant,
    buf: Vec<u8>,
    /// Head length + Content-Length once the head is in.
    need: Option<usize>,
}

struct Epoll(RawFd);

impl Drop for Epoll {
    fn drop(&mut self) {
        // SAFETY: our own epoll fd, closed once.
        unsafe { libc::close(self.0) };
    }
}

struct Worker<'a> {
    spec: &'a Spec,
    ep: Epoll,
    conns: Vec<Conn>,
    out: Outcome,
    measuring: bool,
}

impl<'a> Worker<'a> {
    fn new(spec: &'a Spec, ids: &[usize]) -> Result<Self, String> {
        if spec.sources.is_empty() {
            return Err("no source addresses".into());
        }
        // SAFETY: plain syscall, result checked.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if ep < 0 {
            return Err(format!("epoll_create1: {}", io::Error::last_os_error()));
        }
        let now = Instant::now();
        Ok(Self {
            spec,
            ep: Epoll(ep),
            conns: ids
                .iter()
                .map(|&k| Conn {
                    sock: None,
                    src: k % spec.sources.len(),
                    state: State::Closed,
                    t0: now,
                    retry_at: now,
                    buf: Vec::with_capacity(1024),
                    need: None,
                })
                .collect(),
            out: Outcome {
                backend_sets: vec![0; spec.sources.len()],
                ..Default::default()
            },
            measuring: false,
        })
    }

    fn ctl(&self, op: i32, fd: RawFd, events: u32, i: usize) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events,
            u64: i as u64,
        };
        // SAFETY: valid epoll fd and socket fd; ev outlives the call.
        if unsafe { libc::epoll_ctl(self.ep.0, op, fd, &mut ev) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn run(mut self, phase: &AtomicU8) -> Result<Outcome, String> {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
        let mut last_scan = Instant::now();
        for i in 0..self.conns.len() {
            self.open(i, Instant::now());
        }
        loop {
            match phase.load(Ordering::Acquire) {
                STOP => break,
                MEASURE => self.measuring = true,
                _ => {}
            }
            // SAFETY: valid epoll fd and a buffer of events.len() entries.
            let n = unsafe {
                libc::epoll_wait(self.ep.0, events.as_mut_ptr(), events.len() as i32, 10)
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(format!("epoll_wait: {e}"));
            }
            for ev in &events[..n as usize] {
                let (i, bits) = (ev.u64 as usize, ev.events);
                self.event(i, bits);
            }
            let now = Instant::now();
            if now - last_scan >= Duration::from_millis(20) {
                last_scan = now;
                for i in 0..self.conns.len() {
                    let c = &self.conns[i];
                    match c.state {
                        State::Closed if c.retry_at <= now => self.open(i, now),
                        State::Connecting | State::Reading if now - c.t0 > STUCK => {
                            self.fail(i, "timed out (2 s)".into());
                        }
                        _ => {}
                    }
                }
            }
        }
        for c in &mut self.conns {
            c.sock = None;
        }
        Ok(self.out)
    }

    fn error(&mut self, what: String) {
        if self.measuring {
            self.out.errors += 1;
            if self.out.first_error.is_none() {
                self.out.first_error = Some(what);
            }
        }
    }

    /// Drops connection `i` (an error) and retries it shortly.
    fn fail(&mut self, i: usize, what: String) {
        self.error(what);
        self.close(i);
        self.conns[i].retry_at = Instant::now() + Duration::from_millis(10);
    }

    fn close(&mut self, i: usize) {
        let c = &mut self.conns[i];
        c.sock = None; // close(2) also removes it from the epoll set
        c.state = State::Closed;
        c.buf.clear();
        c.need = None;
        c.retry_at = Instant::now();
    }

    fn open(&mut self, i: usize, now: Instant) {
        let target = self.spec.target;
        let src = self.spec.sources[self.conns[i].src];
        let r = (|| -> io::Result<Socket> {
            let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
            s.set_nonblocking(true)?;
            s.set_tcp_nodelay(true)?;
            // The port is picked at connect() for the whole 4-tuple, so
            // each source address has the full port range per target.
            let one: libc::c_int = 1;
            // SAFETY: valid socket fd, int option of the right size.
            unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::IPPROTO_IP,
                    libc::IP_BIND_ADDRESS_NO_PORT,
                    (&one as *const libc::c_int).cast(),
                    size_of::<libc::c_int>() as u32,
                )
            };
            s.bind(&SockAddr::from(SocketAddrV4::new(src, 0)))?;
            match s.connect(&SockAddr::from(target)) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
                Err(e) => return Err(e),
            }
            Ok(s)
        })();
        match r.and_then(|s| {
            self.ctl(libc::EPOLL_CTL_ADD, s.as_raw_fd(), libc::EPOLLOUT as u32, i)?;
            Ok(s)
        }) {
            Ok(s) => {
                let c = &mut self.conns[i];
                c.sock = Some(s);
                c.state = State::Connecting;
                c.t0 = now;
            }
            Err(e) => {
                self.error(format!("connect from {src}: {e}"));
                let c = &mut self.conns[i];
                c.state = State::Closed;
                c.retry_at = now + Duration::from_millis(10);
            }
        }
    }

    fn send(&mut self, i: usize) {
        let c = &mut self.conns[i];
        let Some(s) = c.sock.as_ref() else { return };
        let fd = s.as_raw_fd();
        // A fresh or idle connection always takes ~60 bytes at once.
        let wrote = (&*s).write(REQUEST);
        match wrote {
            Ok(n) if n == REQUEST.len() => {}
            Ok(n) => return self.fail(i, format!("short write {n}")),
            Err(e) => return self.fail(i, format!("write: {e}")),
        }
        let c = &mut self.conns[i];
        c.state = State::Reading;
        c.buf.clear();
        c.need = None;
        if let Err(e) = self.ctl(libc::EPOLL_CTL_MOD, fd, libc::EPOLLIN as u32, i) {
            self.fail(i, format!("epoll_ctl: {e}"));
        }
    }

    fn event(&mut self, i: usize, bits: u32) {
        match self.conns[i].state {
            State::Closed => {}
            State::Connecting => {
                let err = match self.conns[i].sock.as_ref().map(Socket::take_error) {
                    Some(Ok(None)) => None,
                    Some(Ok(Some(e))) | Some(Err(e)) => Some(e.to_string()),
                    None => Some("no socket".into()),
                };
                if let Some(e) = err {
                    return self.fail(i, format!("connect: {e}"));
                }
                if bits & libc::EPOLLOUT as u32 == 0 {
                    return;
                }
                if self.measuring {
                    self.out.connects += 1;
                }
                if !self.spec.new_conn {
                    self.conns[i].t0 = Instant::now();
                }
                self.send(i);
            }
            State::Reading => self.read(i),
        }
    }

    fn read(&mut self, i: usize) {
        let mut eof = false;
        let mut chunk = [0u8; 4096];
        {
            let c = &mut self.conns[i];
            let Some(s) = c.sock.as_ref() else { return };
            loop {
                match (&*s).read(&mut chunk) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(n) => c.buf.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        let e = format!("read: {e}");
                        return self.fail(i, e);
                    }
                }
            }
        }
        let c = &mut self.conns[i];
        if c.need.is_none()
            && let Some(head) = c.buf.windows(4).position(|w| w == b"\r\n\r\n")
        {
            match parse_head(&c.buf[..head]) {
                Ok(len) => c.need = Some(head + 4 + len),
                Err(e) => return self.fail(i, e),
            }
        }
        let c = &mut self.conns[i];
        match c.need {
            Some(need) if c.buf.len() >= need => self.complete(i, need),
            _ if eof => {
                if c.buf.is_empty() && !self.spec.new_conn {
                    // The server closed an idle keep-alive connection just as
                    // we sent: reopen and send again.
                    if self.measuring {
                        self.out.server_closes += 1;
                    }
                    self.close(i);
                } else {
                    self.fail(i, "connection closed mid-answer".into());
                }
            }
            _ => {}
        }
    }

    fn complete(&mut self, i: usize, need: usize) {
        let now = Instant::now();
        let c = &mut self.conns[i];
        let head = c
            .buf
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(need, |h| h + 4);
        let backend = std::str::from_utf8(&c.buf[head..need])
            .ok()
            .and_then(|b| b.trim().strip_prefix("backend-")?.parse::<usize>().ok())
            .filter(|&b| b < MAX_BACKENDS);
        if let Some(b) = backend {
            self.out.backend_sets[c.src] |= 1 << b;
        }
        if self.measuring {
            self.out.requests += 1;
            let us = (now - c.t0).as_micros().min(u32::MAX as u128) as u32;
            self.out.latencies_us.push(us);
            if let Some(b) = backend {
                self.out.per_backend[b] += 1;
            }
        }
        if self.spec.new_conn {
            self.close(i);
            self.open(i, now);
        } else {
            c.t0 = now;
            self.send(i);
        }
    }
}

/// The body length of a `200` answer's head, or what is wrong with it.
fn parse_head(head: &[u8]) -> Result<usize, String> {
    let text = String::from_utf8_lossy(head);
    if !text.starts_with("HTTP/1.1 200") {
        let line = text.lines().next().unwrap_or_default();
        return Err(format!("answer {line:?}"));
    }
    text.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())
                .flatten()
        })
        .ok_or_else(|| "answer without Content-Length".to_owned())
}
