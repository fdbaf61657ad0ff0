//! `slb-backend`: the web server behind the load balancer in the
//! network-namespace tests and the demo.
//!
//! Every answer names the backend that gave it (`X-Backend` and the body of
//! `/`), so a client can see where the load balancer sent it. `/session`
//! keeps a visit counter per `sid` cookie, in this process's memory by
//! default: a client moved to another backend loses its session, which is
//! what stickiness is there to prevent. With `--redis` the counters live in
//! Redis instead and survive a move. `/delay/MS` answers 200 after MS
//! milliseconds (at most 10 s): a health check that is slow to pass.
//!
//! With `--udp` it also answers UDP datagrams on each address given, with
//! its name and the datagram (`backend-1 ping`): a UDP service for UDP VIPs.
//! Each address is bound on its own (the VIP and the backend's address, say)
//! so a reply leaves from the address the datagram was sent to.
//!
//! std only, so that it builds wherever the tests build and starts fast.

use std::collections::HashMap;
use std::collections::hash_map::{Entry, RandomState};
use std::env;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs;
use std::hash::BuildHasher;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs, UdpSocket};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const USAGE: &str = "usage: slb-backend --name NAME [--listen ADDR:PORT (default 0.0.0.0:80)] \
                     [--redis ADDR:PORT] [--udp ADDR:PORT[,ADDR:PORT...]] [--ready-file PATH]";

/// Larger heads are refused with 431 rather than buffered.
const MAX_HEAD: usize = 16 * 1024;
/// Bodies up to this size are read and dropped so the connection stays usable;
/// larger or chunked ones end the connection instead.
const MAX_DISCARDED_BODY: u64 = 64 * 1024;
const READ_TIMEOUT: Duration = Duration::from_secs(10);
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);
const SID_MAX_LEN: usize = 128;
/// `/delay/MS` sleeps at most this long, so a typo cannot hold a thread for ever.
const MAX_DELAY_MS: u64 = 10_000;

fn main() -> ExitCode {
    let args = match parse_args(env::args_os().skip(1)) {
        Ok(Cli::Run(args)) => args,
        Ok(Cli::Help) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(msg) => {
            eprintln!("slb-backend: {msg} ({USAGE})");
            return ExitCode::from(2);
        }
    };
    for addr in &args.udp {
        match UdpSocket::bind(addr) {
            Ok(socket) => {
                let name = args.name.clone();
                thread::spawn(move || serve_udp(&socket, &name));
            }
            Err(e) => {
                eprintln!("slb-backend: bind udp {addr}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let listener = match TcpListener::bind(args.listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("slb-backend: bind {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    if let Some(path) = &args.ready_file {
        let written = listener
            .local_addr()
            .and_then(|addr| write_ready_file(path, addr));
        if let Err(e) = written {
            eprintln!("slb-backend: ready file {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    let store = match args.redis {
        Some(addr) => Store::Redis { addr },
        None => Store::memory(),
    };
    let config = Config {
        name: args.name,
        store,
        log: env::var_os("SLB_BACKEND_LOG").is_some_and(|v| v == "1"),
    };
    serve(listener, Arc::new(config));
    ExitCode::SUCCESS
}

// ---------------------------------------------------------------- CLI

#[derive(Debug, PartialEq)]
enum Cli {
    Run(Args),
    Help,
}

#[derive(Debug, PartialEq)]
struct Args {
    name: String,
    listen: SocketAddr,
    redis: Option<String>,
    udp: Vec<SocketAddr>,
    ready_file: Option<PathBuf>,
}

fn parse_args(args: impl IntoIterator<Item = OsString>) -> Result<Cli, String> {
    let mut name = None;
    let mut listen = None;
    let mut redis = None;
    let mut udp = None;
    let mut ready_file = None;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let arg = arg
            .into_string()
            .map_err(|a| format!("argument {a:?} is not valid UTF-8"))?;
        if arg == "-h" || arg == "--help" {
            return Ok(Cli::Help);
        }
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg, None),
        };
        let slot = match flag.as_str() {
            "--name" => &mut name,
            "--listen" => &mut listen,
            "--redis" => &mut redis,
            "--udp" => &mut udp,
            "--ready-file" => &mut ready_file,
            _ => return Err(format!("unknown argument {flag:?}")),
        };
        let value = match inline {
            Some(v) => v,
            None => match args.next().map(OsString::into_string) {
                // `--name --listen x` is a forgotten value, not a name.
                Some(Ok(v)) if !v.starts_with("--") => v,
                Some(Err(v)) => return Err(format!("{flag} value {v:?} is not valid UTF-8")),
                _ => return Err(format!("{flag} needs a value")),
            },
        };
        if value.is_empty() {
            return Err(format!("{flag} needs a value"));
        }
        if slot.replace(value).is_some() {
            return Err(format!("{flag} given twice"));
        }
    }
    let name = name.ok_or("--name is required")?;
    // The name goes verbatim into a header and into one-line bodies.
    if !name.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "--name {name:?}: only printable ASCII without spaces"
        ));
    }
    let listen = match listen {
        Some(l) => l
            .parse()
            .map_err(|e| format!("--listen {l:?}: {e} (want ADDR:PORT)"))?,
        None => SocketAddr::from(([0, 0, 0, 0], 80)),
    };
    if let Some(r) = &redis {
        let resolved = r.to_socket_addrs().map(|mut a| a.next().is_some());
        if !matches!(resolved, Ok(true)) {
            return Err(format!("--redis {r:?}: not an ADDR:PORT"));
        }
    }
    let udp = match udp {
        Some(list) => list
            .split(',')
            .map(|a| {
                a.parse()
                    .map_err(|e| format!("--udp {a:?}: {e} (want ADDR:PORT[,ADDR:PORT...])"))
            })
            .collect::<Result<Vec<SocketAddr>, String>>()?,
        None => Vec::new(),
    };
    Ok(Cli::Run(Args {
        name,
        listen,
        redis,
        udp,
        ready_file: ready_file.map(PathBuf::from),
    }))
}

/// Tests wait for the file to exist, so it must appear with its content:
/// written aside, then renamed into place.
fn write_ready_file(path: &PathBuf, addr: SocketAddr) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    fs::write(&tmp, addr.to_string())?;
    fs::rename(&tmp, path)
}

// ---------------------------------------------------------------- server

struct Config {
    name: String,
    store: Store,
    log: bool,
}

enum Store {
    Memory(Mutex<HashMap<String, u64>>),
    Redis { addr: String },
}

impl Store {
    fn memory() -> Self {
        Store::Memory(Mutex::new(HashMap::new()))
    }

    /// Counts one visit; returns the visits so far and whether this store had
    /// never seen the session before.
    fn visit(&self, sid: &str) -> Result<(u64, bool), String> {
        match self {
            Store::Memory(map) => {
                // A panic elsewhere cannot leave a counter half-written.
                let mut map = map.lock().unwrap_or_else(PoisonError::into_inner);
                match map.entry(sid.to_owned()) {
                    Entry::Occupied(mut e) => {
                        *e.get_mut() += 1;
                        Ok((*e.get(), false))
                    }
                    Entry::Vacant(e) => {
                        e.insert(1);
                        Ok((1, true))
                    }
                }
            }
            Store::Redis { addr } => {
                let n = redis_incr(addr, &format!("stickylb:session:{sid}"))?;
                let n = u64::try_from(n).map_err(|_| format!("INCR returned {n}"))?;
                Ok((n, n == 1))
            }
        }
    }
}

fn serve(listener: TcpListener, config: Arc<Config>) {
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                let config = Arc::clone(&config);
                let spawned = thread::Builder::new()
                    .name("slb-conn".into())
                    .spawn(move || handle_connection(&stream, &config));
                if let Err(e) = spawned {
                    eprintln!("slb-backend: spawn: {e}");
                }
            }
            Err(e) => {
                eprintln!("slb-backend: accept: {e}");
                // Out of descriptors fails again at once: don't spin on it.
                thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Answers every datagram with the backend's name and the datagram itself.
fn serve_udp(socket: &UdpSocket, name: &str) {
    let mut buf = [0u8; 2048];
    loop {
        match socket.recv_from(&mut buf) {
            Ok((n, peer)) => {
                let mut reply = format!("{name} ").into_bytes();
                reply.extend_from_slice(&buf[..n]);
                if let Err(e) = socket.send_to(&reply, peer) {
                    eprintln!("slb-backend: udp send to {peer}: {e}");
                }
            }
            Err(e) => {
                eprintln!("slb-backend: udp receive: {e}");
                thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn handle_connection(stream: &TcpStream, config: &Config) {
    let peer = stream
        .peer_addr()
        .map_or_else(|_| "?".to_owned(), |a| a.to_string());
    if stream.set_read_timeout(Some(READ_TIMEOUT)).is_err()
        || stream.set_write_timeout(Some(READ_TIMEOUT)).is_err()
    {
        return;
    }
    let _ = stream.set_nodelay(true);
    let mut reader = BufReader::new(stream);
    loop {
        let head = match read_head(&mut reader) {
            Ok(Some(head)) => head,
            Ok(None) | Err(HeadError::Io) => return,
            Err(HeadError::TooLarge) => {
                let resp = Response::text(431, "request head too large\n");
                return refuse(stream, config, &peer, &resp);
            }
        };
        let req = match parse_head(&head) {
            Ok(req) => req,
            Err(status) => {
                let resp = Response::text(status, &format!("{}\n", reason(status)));
                return refuse(stream, config, &peer, &resp);
            }
        };
        let mut keep_alive = req.keep_alive();
        let mut linger = false;
        match req.body() {
            Err(status) => {
                let resp = Response::text(status, &format!("{}\n", reason(status)));
                return refuse(stream, config, &peer, &resp);
            }
            Ok(Body::None) => {}
            Ok(Body::Length(n)) if n <= MAX_DISCARDED_BODY => {
                match io::copy(&mut (&mut reader).take(n), &mut io::sink()) {
                    Ok(copied) if copied == n => {}
                    _ => return,
                }
            }
            Ok(_) => {
                keep_alive = false;
                linger = true;
            }
        }
        let resp = route(&req, config);
        let bytes = resp.encode(
            &config.name,
            req.method == "HEAD",
            keep_alive,
            &http_date(SystemTime::now()),
        );
        let sent = (&*stream).write_all(&bytes);
        if config.log {
            eprintln!(
                "{} {peer} {} {:?} {}",
                config.name, req.method, req.target, resp.status
            );
        }
        if sent.is_err() || !keep_alive {
            if linger {
                linger_close(stream);
            }
            return;
        }
    }
}

/// Answers a request that ends the connection.
fn refuse(stream: &TcpStream, config: &Config, peer: &str, resp: &Response) {
    let bytes = resp.encode(&config.name, false, false, &http_date(SystemTime::now()));
    if config.log {
        eprintln!("{} {peer} - {}", config.name, resp.status);
    }
    if (&*stream).write_all(&bytes).is_ok() {
        linger_close(stream);
    }
}

/// Closing with unread input makes the kernel send a reset, which can destroy
/// the answer before the client has read it; so stop writing, then drain what
/// the client still sends for a little while.
fn linger_close(stream: &TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let _ = io::copy(&mut stream.take(1 << 20), &mut io::sink());
}

// ---------------------------------------------------------------- requests

#[derive(Debug)]
enum HeadError {
    TooLarge,
    /// Closed, timed out or failed: which one changes nothing, nobody is left to answer.
    Io,
}

impl From<io::Error> for HeadError {
    fn from(_: io::Error) -> Self {
        HeadError::Io
    }
}

/// Reads one request head, up to and without its empty line. `Ok(None)` is a
/// clean end of the connection between requests.
fn read_head<R: BufRead>(r: &mut R) -> Result<Option<Vec<u8>>, HeadError> {
    let mut head = Vec::new();
    // Leading empty lines count too, or a client could stream them forever.
    let mut consumed = 0;
    loop {
        let room = MAX_HEAD - consumed;
        if room == 0 {
            return Err(HeadError::TooLarge);
        }
        let mut line = Vec::new();
        let n = r.by_ref().take(room as u64).read_until(b'\n', &mut line)?;
        consumed += n;
        if n == 0 {
            return if head.is_empty() {
                Ok(None)
            } else {
                Err(io::Error::from(io::ErrorKind::UnexpectedEof).into())
            };
        }
        if !line.ends_with(b"\n") {
            return if consumed == MAX_HEAD {
                Err(HeadError::TooLarge)
            } else {
                Err(io::Error::from(io::ErrorKind::UnexpectedEof).into())
            };
        }
        if line == b"\r\n" || line == b"\n" {
            // RFC 9112 §2.2: empty lines before a request line are ignored.
            if head.is_empty() {
                continue;
            }
            return Ok(Some(head));
        }
        head.extend_from_slice(&line);
    }
}

#[derive(Debug)]
struct Request {
    method: String,
    target: String,
    /// Minor version of HTTP/1.x.
    minor: u8,
    headers: Vec<(String, String)>,
}

#[derive(Debug, PartialEq)]
enum Body {
    None,
    Length(u64),
    /// Too long or chunked: not worth reading, so the connection ends.
    Unread,
}

/// Parses a head from `read_head`; the error is the status to answer with.
fn parse_head(head: &[u8]) -> Result<Request, u16> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .filter(|l| !l.is_empty());
    let request_line = lines.next().ok_or(400_u16)?;
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(400);
    };
    if method.is_empty() || target.is_empty() || !method.bytes().all(is_tchar) {
        return Err(400);
    }
    let minor = match version {
        "HTTP/1.1" => 1,
        "HTTP/1.0" => 0,
        v if v.starts_with("HTTP/") => return Err(505),
        _ => return Err(400),
    };
    let mut headers = Vec::new();
    for line in lines {
        // Folded (obs-fold) lines are refused, as RFC 9112 §5.2 allows.
        if line.starts_with([' ', '\t']) {
            return Err(400);
        }
        let (name, value) = line.split_once(':').ok_or(400_u16)?;
        if name.is_empty() || !name.bytes().all(is_tchar) {
            return Err(400);
        }
        headers.push((name.to_owned(), value.trim_matches([' ', '\t']).to_owned()));
    }
    // A missing Host is not refused: test clients that write raw requests
    // by hand should not have to care.
    Ok(Request {
        method: method.to_owned(),
        target: target.to_owned(),
        minor,
        headers,
    })
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

impl Request {
    fn headers<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn connection_has(&self, token: &str) -> bool {
        self.headers("connection")
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    fn keep_alive(&self) -> bool {
        if self.connection_has("close") {
            return false;
        }
        self.minor >= 1 || self.connection_has("keep-alive")
    }

    /// The path, without query or fragment, also from an absolute-form target.
    fn path(&self) -> &str {
        let target = match self.target.split_once("://") {
            Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
            None => &self.target,
        };
        let end = target.find(['?', '#']).unwrap_or(target.len());
        &target[..end]
    }

    /// The `sid` cookie, if it is one this server could have issued; anything
    /// else gets a fresh session rather than being echoed into keys and bodies.
    fn session_id(&self) -> Option<&str> {
        self.headers("cookie")
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().split_once('='))
            .filter(|(n, _)| *n == "sid")
            .map(|(_, v)| {
                v.strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(v)
            })
            .find(|v| valid_sid(v))
    }

    fn body(&self) -> Result<Body, u16> {
        if self.headers("transfer-encoding").next().is_some() {
            // RFC 9112 §6.1: both framings at once smells of request smuggling.
            if self.headers("content-length").next().is_some() {
                return Err(400);
            }
            return Ok(Body::Unread);
        }
        let mut length = None;
        for v in self.headers("content-length").flat_map(|v| v.split(',')) {
            let v = v.trim();
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                return Err(400);
            }
            let n: u64 = v.parse().map_err(|_| 400_u16)?;
            if length.is_some_and(|l| l != n) {
                return Err(400);
            }
            length = Some(n);
        }
        Ok(match length {
            None | Some(0) => Body::None,
            Some(n) if n <= MAX_DISCARDED_BODY => Body::Length(n),
            Some(_) => Body::Unread,
        })
    }
}

fn valid_sid(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= SID_MAX_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

// ---------------------------------------------------------------- responses

#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
}

impl Response {
    fn text(status: u16, body: &str) -> Self {
        Response {
            status,
            headers: Vec::new(),
            body: body.to_owned(),
        }
    }

    fn header(mut self, name: &'static str, value: String) -> Self {
        self.headers.push((name, value));
        self
    }

    /// HEAD gets the headers GET would get, Content-Length included.
    fn encode(&self, name: &str, head_only: bool, keep_alive: bool, date: &str) -> Vec<u8> {
        let mut out = String::with_capacity(256 + self.body.len());
        let _ = write!(
            out,
            "HTTP/1.1 {} {}\r\n\
             Date: {date}\r\n\
             Server: slb-backend\r\n\
             X-Backend: {name}\r\n\
             Content-Type: text/plain; charset=utf-8\r\n\
             Content-Length: {}\r\n\
             Cache-Control: no-store\r\n",
            self.status,
            reason(self.status),
            self.body.len(),
        );
        for (n, v) in &self.headers {
            let _ = write!(out, "{n}: {v}\r\n");
        }
        // Explicit both ways: HTTP/1.0 clients need `keep-alive` spelt out.
        let connection = if keep_alive { "keep-alive" } else { "close" };
        let _ = write!(out, "Connection: {connection}\r\n\r\n");
        if !head_only {
            out.push_str(&self.body);
        }
        out.into_bytes()
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

fn route(req: &Request, config: &Config) -> Response {
    if req.method != "GET" && req.method != "HEAD" {
        return Response::text(405, "method not allowed\n").header("Allow", "GET, HEAD".into());
    }
    match req.path() {
        "/" => Response::text(200, &format!("{}\n", config.name)),
        "/healthz" => Response::text(200, "ok\n"),
        // A health endpoint that answers late, for tests of what a load
        // balancer does while a check is still in flight.
        p if p.starts_with("/delay/") => match p["/delay/".len()..].parse::<u64>() {
            Ok(ms) if ms <= MAX_DELAY_MS => {
                thread::sleep(Duration::from_millis(ms));
                Response::text(200, "ok\n")
            }
            _ => Response::text(404, "not found\n"),
        },
        // HEAD counts a visit too: its Content-Length has to be GET's.
        "/session" => session(req, config),
        _ => Response::text(404, "not found\n"),
    }
}

fn session(req: &Request, config: &Config) -> Response {
    let (sid, issued) = match req.session_id() {
        Some(sid) => (sid.to_owned(), false),
        None => (new_sid(&config.name), true),
    };
    let resp = match config.store.visit(&sid) {
        Ok((visits, new)) => Response::text(
            200,
            &format!("{} sid={sid} visits={visits} new={new}\n", config.name),
        ),
        Err(e) => return Response::text(503, &format!("redis error: {e}\n")),
    };
    if issued {
        resp.header("Set-Cookie", format!("sid={sid}; Path=/"))
    } else {
        resp
    }
}

/// Unique (time and counter differ between calls) and unguessable enough for
/// a demo: hashed with the randomly keyed std hasher, name and pid added so
/// backends never collide with one another.
fn new_sid(name: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut sid = String::with_capacity(32);
    for salt in 0..2_u8 {
        let h = RandomState::new().hash_one((salt, nanos, n, name, std::process::id()));
        let _ = write!(sid, "{h:016x}");
    }
    sid
}

/// IMF-fixdate (RFC 9110 §5.6.7), which HTTP/1.1 servers with a clock send.
fn http_date(t: SystemTime) -> String {
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days, for days since 1970 (never negative here).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{}, {day:02} {} {year:04} {:02}:{:02}:{:02} GMT",
        WEEKDAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize],
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
    )
}

// ---------------------------------------------------------------- Redis

/// `INCR key` over a fresh connection: one per request keeps no state to go
/// stale when Redis restarts, and the demo's rate makes the cost irrelevant.
fn redis_incr(addr: &str, key: &str) -> Result<i64, String> {
    let addrs = addr
        .to_socket_addrs()
        .map_err(|e| format!("resolve {addr}: {e}"))?;
    let mut last = format!("resolve {addr}: no address");
    let mut stream = None;
    for a in addrs {
        match TcpStream::connect_timeout(&a, REDIS_TIMEOUT) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = format!("connect {a}: {e}"),
        }
    }
    let stream = stream.ok_or(last)?;
    let io_err = |e: io::Error| format!("{addr}: {e}");
    stream
        .set_read_timeout(Some(REDIS_TIMEOUT))
        .map_err(io_err)?;
    stream
        .set_write_timeout(Some(REDIS_TIMEOUT))
        .map_err(io_err)?;
    (&stream)
        .write_all(&resp_command(&[b"INCR", key.as_bytes()]))
        .map_err(io_err)?;
    let mut line = Vec::new();
    BufReader::new(&stream)
        .take(64 * 1024)
        .read_until(b'\n', &mut line)
        .map_err(io_err)?;
    decode_incr_reply(&line)
}

/// A RESP array of bulk strings, the form Redis takes every command in.
fn resp_command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// INCR answers an integer (`:n`) or an error (`-ERR ...`); both are one line.
fn decode_incr_reply(line: &[u8]) -> Result<i64, String> {
    let Some(body) = line.strip_suffix(b"\r\n") else {
        return Err(if line.is_empty() {
            "connection closed without a reply".to_owned()
        } else {
            "truncated reply".to_owned()
        });
    };
    let text = String::from_utf8_lossy(body);
    match text.split_at_checked(1) {
        Some((":", n)) => n.parse().map_err(|_| format!("bad integer reply {text:?}")),
        Some(("-", msg)) => Err(msg.to_owned()),
        _ => Err(format!("unexpected reply {text:?}")),
    }
}

// ---------------------------------------------------------------- tests

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn req(raw: &str) -> Request {
        let head = read_head(&mut Cursor::new(raw.as_bytes()))
            .unwrap()
            .unwrap();
        parse_head(&head).unwrap()
    }

    fn args(list: &[&str]) -> Result<Cli, String> {
        parse_args(list.iter().map(OsString::from))
    }

    #[test]
    fn cli() {
        let Ok(Cli::Run(a)) = args(&["--name", "b1"]) else {
            panic!()
        };
        assert_eq!(a.name, "b1");
        assert_eq!(a.listen, "0.0.0.0:80".parse().unwrap());
        assert_eq!((a.redis, a.ready_file), (None, None));
        assert!(a.udp.is_empty());

        let Ok(Cli::Run(a)) = args(&[
            "--listen=127.0.0.1:8080",
            "--name",
            "b2",
            "--redis",
            "10.0.0.1:6379",
            "--ready-file",
            "/tmp/r",
            "--udp",
            "10.0.0.2:53,127.0.0.1:5353",
        ]) else {
            panic!()
        };
        assert_eq!(
            a.udp,
            vec![
                "10.0.0.2:53".parse().unwrap(),
                "127.0.0.1:5353".parse().unwrap()
            ]
        );
        assert_eq!(a.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(a.redis.as_deref(), Some("10.0.0.1:6379"));
        assert_eq!(a.ready_file, Some(PathBuf::from("/tmp/r")));

        assert_eq!(args(&["--help"]), Ok(Cli::Help));
        for bad in [
            &[][..],
            &["--name"],
            &["--name", "--listen", "1.2.3.4:5"],
            &["--name", "a", "--name", "b"],
            &["--name", "a b"],
            &["--name", "a", "--listen", "nope"],
            &["--name", "a", "--redis", "10.0.0.1"],
            &["--name", "a", "--udp", "10.0.0.1:53,nope"],
            &["--name", "a", "--bogus"],
            &["stray"],
        ] {
            assert!(args(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn head_reading() {
        let mut r = Cursor::new(&b"\r\nGET / HTTP/1.1\r\nA: b\r\n\r\nGET /x HTTP/1.1\r\n\r\n"[..]);
        assert_eq!(
            read_head(&mut r).unwrap().unwrap(),
            b"GET / HTTP/1.1\r\nA: b\r\n"
        );
        assert_eq!(read_head(&mut r).unwrap().unwrap(), b"GET /x HTTP/1.1\r\n");
        assert!(read_head(&mut r).unwrap().is_none());

        let mut cut = Cursor::new(&b"GET / HTTP/1.1\r\nA: b"[..]);
        assert!(matches!(read_head(&mut cut), Err(HeadError::Io)));

        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        let mut big = Cursor::new(big.into_bytes());
        assert!(matches!(read_head(&mut big), Err(HeadError::TooLarge)));
        let blank = "\r\n".repeat(MAX_HEAD);
        let mut blank = Cursor::new(blank.into_bytes());
        assert!(matches!(read_head(&mut blank), Err(HeadError::TooLarge)));
    }

    #[test]
    fn head_parsing() {
        let r = req("GET /session?x=1 HTTP/1.1\r\nHost: h\r\n\
                     Cookie: a=1; sid=abc-12_Z; b=2\r\n\r\n");
        assert_eq!((r.method.as_str(), r.path()), ("GET", "/session"));
        assert_eq!(r.session_id(), Some("abc-12_Z"));
        assert!(r.keep_alive());
        assert_eq!(r.body(), Ok(Body::None));

        let r = req(
            "HEAD http://vip/healthz HTTP/1.1\r\nconnection: Keep-Alive, CLOSE\r\n\
                     Cookie: other=1\r\ncookie: sid=\"q1\"\r\n\r\n",
        );
        assert_eq!((r.method.as_str(), r.path()), ("HEAD", "/healthz"));
        assert!(!r.keep_alive());
        assert_eq!(r.session_id(), Some("q1"));

        let r = req("GET / HTTP/1.0\r\nCookie: sid=a/b; sid=; x\r\n\r\n");
        assert!(!r.keep_alive());
        assert_eq!(r.session_id(), None);
        assert!(req("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").keep_alive());

        let r = req("POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n");
        assert_eq!(r.body(), Ok(Body::Length(5)));
        let r = req("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(r.body(), Ok(Body::Unread));
        let r = req("POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n");
        assert_eq!(r.body(), Err(400));

        for (bad, status) in [
            (&b"GET /\r\n"[..], 400),
            (b"GET  / HTTP/1.1\r\n", 400),
            (b"GET / HTTP/2.0\r\n", 505),
            (b"GET / FTP/1.0\r\n", 400),
            (b"GET / HTTP/1.1\r\nNo colon\r\n", 400),
            (b"GET / HTTP/1.1\r\nBad name: x\r\n", 400),
            (b"GET / HTTP/1.1\r\nA: b\r\n folded\r\n", 400),
        ] {
            assert_eq!(parse_head(bad).unwrap_err(), status, "{bad:?}");
        }
    }

    #[test]
    fn response_format() {
        let r = Response::text(200, "b1\n").header("Set-Cookie", "sid=x; Path=/".into());
        let date = "Sun, 06 Nov 1994 08:49:37 GMT";
        let got = String::from_utf8(r.encode("b1", false, true, date)).unwrap();
        assert_eq!(
            got,
            "HTTP/1.1 200 OK\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nServer: slb-backend\r\n\
             X-Backend: b1\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 3\r\n\
             Cache-Control: no-store\r\nSet-Cookie: sid=x; Path=/\r\n\
             Connection: keep-alive\r\n\r\nb1\n"
        );
        let head = String::from_utf8(r.encode("b1", true, false, date)).unwrap();
        assert!(head.ends_with(
            "Content-Length: 3\r\nCache-Control: no-store\r\n\
                                Set-Cookie: sid=x; Path=/\r\nConnection: close\r\n\r\n"
        ));

        let at = |s| http_date(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(784_111_777), date);
        assert_eq!(at(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(at(951_782_400), "Tue, 29 Feb 2000 00:00:00 GMT");
    }

    #[test]
    fn routing_and_sessions() {
        let config = Config {
            name: "b1".into(),
            store: Store::memory(),
            log: false,
        };
        assert_eq!(route(&req("POST / HTTP/1.1\r\n\r\n"), &config).status, 405);
        assert_eq!(
            route(&req("GET /nope HTTP/1.1\r\n\r\n"), &config).status,
            404
        );
        assert_eq!(
            route(&req("GET /healthz HTTP/1.1\r\n\r\n"), &config).body,
            "ok\n"
        );

        let first = route(&req("GET /session HTTP/1.1\r\n\r\n"), &config);
        let (_, cookie) = first
            .headers
            .iter()
            .find(|(n, _)| *n == "Set-Cookie")
            .unwrap();
        let sid = cookie
            .strip_prefix("sid=")
            .unwrap()
            .strip_suffix("; Path=/")
            .unwrap();
        assert!(valid_sid(sid) && sid.len() == 32);
        assert_eq!(first.body, format!("b1 sid={sid} visits=1 new=true\n"));
        // A cookie this server never issued starts a session here, without a new cookie.
        let foreign = route(
            &req("GET /session HTTP/1.1\r\nCookie: sid=elsewhere\r\n\r\n"),
            &config,
        );
        assert_eq!(foreign.body, "b1 sid=elsewhere visits=1 new=true\n");
        assert!(foreign.headers.is_empty());
        assert_ne!(new_sid("b1"), new_sid("b1"));
    }

    #[test]
    fn resp() {
        assert_eq!(
            resp_command(&[b"INCR", b"stickylb:session:ab"]),
            b"*2\r\n$4\r\nINCR\r\n$19\r\nstickylb:session:ab\r\n"
        );
        assert_eq!(decode_incr_reply(b":1\r\n"), Ok(1));
        assert_eq!(decode_incr_reply(b":-3\r\n"), Ok(-3));
        assert_eq!(
            decode_incr_reply(b"-ERR value is not an integer\r\n"),
            Err("ERR value is not an integer".into())
        );
        assert!(decode_incr_reply(b":12").is_err());
        assert!(decode_incr_reply(b"").is_err());
        assert!(decode_incr_reply(b"+OK\r\n").is_err());
        assert!(decode_incr_reply(b":x\r\n").is_err());
    }

    // ------------------------------------------------ over real sockets

    struct Reply {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    }

    impl Reply {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    fn start(store: Store) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let config = Arc::new(Config {
            name: "b7".into(),
            store,
            log: false,
        });
        thread::spawn(move || serve(listener, config));
        addr
    }

    fn connect(addr: SocketAddr) -> BufReader<TcpStream> {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        BufReader::new(s)
    }

    fn exchange(conn: &mut BufReader<TcpStream>, request: &str) -> Reply {
        conn.get_ref().write_all(request.as_bytes()).unwrap();
        let head = read_head(conn).unwrap().unwrap();
        let head = String::from_utf8(head).unwrap();
        let mut lines = head.lines();
        let status = lines.next().unwrap()[9..12].parse().unwrap();
        let headers: Vec<_> = lines
            .map(|l| {
                let (n, v) = l.split_once(": ").unwrap();
                (n.to_owned(), v.to_owned())
            })
            .collect();
        let mut reply = Reply {
            status,
            headers,
            body: String::new(),
        };
        if !request.starts_with("HEAD") {
            let len = reply.header("content-length").unwrap().parse().unwrap();
            conn.by_ref()
                .take(len)
                .read_to_string(&mut reply.body)
                .unwrap();
        }
        reply
    }

    fn closed(conn: &mut BufReader<TcpStream>) -> bool {
        matches!(conn.read(&mut [0; 1]), Ok(0))
    }

    #[test]
    fn serves_keep_alive_and_sessions() {
        let addr = start(Store::memory());
        let mut conn = connect(addr);
        let r = exchange(&mut conn, "GET / HTTP/1.1\r\nHost: vip\r\n\r\n");
        assert_eq!((r.status, r.body.as_str()), (200, "b7\n"));
        assert_eq!(r.header("x-backend"), Some("b7"));
        assert_eq!(r.header("connection"), Some("keep-alive"));
        let r = exchange(&mut conn, "HEAD /healthz HTTP/1.1\r\nHost: vip\r\n\r\n");
        assert_eq!((r.status, r.header("content-length")), (200, Some("3")));
        let r = exchange(&mut conn, "GET /healthz HTTP/1.1\r\nHost: vip\r\n\r\n");
        assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));

        let r = exchange(&mut conn, "GET /session HTTP/1.1\r\nHost: vip\r\n\r\n");
        let cookie = r.header("set-cookie").unwrap();
        let sid = cookie
            .strip_prefix("sid=")
            .unwrap()
            .strip_suffix("; Path=/")
            .unwrap();
        assert_eq!(r.body, format!("b7 sid={sid} visits=1 new=true\n"));
        let again =
            format!("GET /session HTTP/1.1\r\nCookie: sid={sid}\r\nConnection: close\r\n\r\n");
        let r = exchange(&mut conn, &again);
        assert_eq!(r.body, format!("b7 sid={sid} visits=2 new=false\n"));
        assert_eq!(r.header("set-cookie"), None);
        assert_eq!(r.header("connection"), Some("close"));
        assert!(closed(&mut conn));

        let mut conn = connect(addr);
        let r = exchange(&mut conn, "DELETE / HTTP/1.1\r\n\r\n");
        assert_eq!((r.status, r.header("allow")), (405, Some("GET, HEAD")));
        let r = exchange(&mut conn, "nonsense\r\n\r\n");
        assert_eq!(r.status, 400);
        assert!(closed(&mut conn));
    }

    /// A one-shot stand-in for Redis: checks the command, sends `reply`.
    fn fake_redis(replies: &'static [&'static [u8]]) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        thread::spawn(move || {
            for reply in replies {
                let (s, _) = listener.accept().unwrap();
                let mut command = vec![0; 64];
                let n = (&s).read(&mut command).unwrap();
                assert!(command[..n].starts_with(b"*2\r\n$4\r\nINCR\r\n$49\r\nstickylb:session:"));
                (&s).write_all(reply).unwrap();
            }
        });
        addr
    }

    #[test]
    fn sessions_in_redis() {
        let redis = fake_redis(&[b":1\r\n", b":2\r\n", b"-ERR boom\r\n"]);
        let addr = start(Store::Redis { addr: redis });
        let mut conn = connect(addr);
        let sid = "a".repeat(32);
        let request = format!("GET /session HTTP/1.1\r\nCookie: sid={sid}\r\n\r\n");
        let r = exchange(&mut conn, &request);
        assert_eq!(r.body, format!("b7 sid={sid} visits=1 new=true\n"));
        let r = exchange(&mut conn, &request);
        assert_eq!(r.body, format!("b7 sid={sid} visits=2 new=false\n"));
        let r = exchange(&mut conn, &request);
        assert_eq!(
            (r.status, r.body.as_str()),
            (503, "redis error: ERR boom\n")
        );

        // Nothing listens on a port just released: refused at once.
        let gone = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let addr = start(Store::Redis {
            addr: gone.to_string(),
        });
        let r = exchange(&mut connect(addr), "GET /session HTTP/1.1\r\n\r\n");
        assert_eq!(r.status, 503);
        assert!(
            r.body.starts_with("redis error: connect 127.0.0.1:"),
            "{}",
            r.body
        );
    }
}
