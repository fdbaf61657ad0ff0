//! The service manager's notification protocol (sd_notify(3)): what the
//! daemon tells systemd of its state, over the datagram socket named by
//! `$NOTIFY_SOCKET`. Without that variable (not run by systemd, or not as
//! `Type=notify`) every call does nothing.
//!
//! Written by hand rather than taken from a crate: the protocol is one
//! datagram of `KEY=value` lines to a path or an abstract socket, and the
//! crates for it either link libsystemd or add nothing the daemon needs.

use std::{
    ffi::OsStr,
    io,
    os::unix::{ffi::OsStrExt as _, net::UnixDatagram},
    path::PathBuf,
    time::Duration,
};

use log::warn;

/// Where notifications go: a socket path, or (for `@name`) an abstract one.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    Path(PathBuf),
    Abstract(Vec<u8>),
}

impl Target {
    fn parse(value: &OsStr) -> Option<Self> {
        let bytes = value.as_bytes();
        match bytes.first()? {
            b'/' => Some(Self::Path(PathBuf::from(value))),
            b'@' => Some(Self::Abstract(bytes[1..].to_vec())),
            // sd_notify(3) accepts nothing else (vsock addresses are for
            // VMs, which this daemon is not run as).
            _ => None,
        }
    }
}

/// The daemon's channel to systemd; `Notifier::from_env()` once at start.
#[derive(Debug)]
pub struct Notifier {
    target: Option<Target>,
    /// `$WATCHDOG_USEC`, when it is meant for this process.
    watchdog: Option<Duration>,
    /// The last `STATUS=` sent, so a status that did not change is not sent
    /// again at every tick.
    last_status: Option<String>,
    /// Sends that failed in a row: the first is logged, then every 100th.
    failures: u32,
}

/// The longest `STATUS=` sent. systemd drops a whole notification of 4096
/// bytes or more (its receive buffer is PIPE_BUF), so a status listing
/// hundreds of VIPs is cut, and READY=1 always travels on its own.
const STATUS_MAX: usize = 1024;

impl Notifier {
    /// Reads `$NOTIFY_SOCKET` and `$WATCHDOG_USEC`/`$WATCHDOG_PID`. They are
    /// left in the environment (removing them is unsound once threads run):
    /// an exec health check's command inherits them, and systemd ignores what
    /// it would send, since only the main process may notify
    /// (`NotifyAccess=main`, the default of `Type=notify`).
    pub fn from_env() -> Self {
        let socket = std::env::var_os("NOTIFY_SOCKET");
        let usec = std::env::var("WATCHDOG_USEC").ok();
        let pid = std::env::var("WATCHDOG_PID").ok();
        Self::new(
            socket.as_deref(),
            usec.as_deref(),
            pid.as_deref(),
            std::process::id(),
        )
    }

    fn new(socket: Option<&OsStr>, usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Self {
        let target = socket.and_then(|s| {
            let t = Target::parse(s);
            if t.is_none() {
                warn!(
                    "NOTIFY_SOCKET={} is neither a path nor an @abstract socket: systemd will \
                     not hear that the daemon is ready",
                    s.to_string_lossy()
                );
            }
            t
        });
        // WATCHDOG_PID, when set, names the process the watchdog is for
        // (the main process of the unit); a child started by it is not.
        let for_us = pid.is_none_or(|p| p.parse::<u32>().ok() == Some(own_pid));
        let watchdog = usec
            .and_then(|u| u.parse::<u64>().ok())
            .filter(|&u| u > 0 && for_us)
            .map(Duration::from_micros);
        Self {
            target,
            watchdog,
            last_status: None,
            failures: 0,
        }
    }

    /// A notifier that sends to the socket at `path`.
    #[cfg(test)]
    fn to_path(path: &std::path::Path) -> Self {
        Self {
            target: Some(Target::Path(path.to_owned())),
            watchdog: None,
            last_status: None,
            failures: 0,
        }
    }

    /// Whether a service manager listens.
    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// How often to send `WATCHDOG=1`: half the manager's timeout, as
    /// sd_watchdog_enabled(3) advises; `None` without a watchdog.
    pub fn watchdog_every(&self) -> Option<Duration> {
        self.watchdog.map(|w| w / 2)
    }

    /// Sends `lines` (`KEY=value`, one per line) as one datagram, without
    /// blocking (a manager too busy to read loses a status, never holds up
    /// the daemon). A failure is logged, never fatal: the load balancer
    /// serves whether or not systemd hears of it. Whether it was sent (true
    /// when no manager listens: there is nothing to send).
    fn send(&mut self, lines: &[String]) -> bool {
        let Some(target) = &self.target else {
            return true;
        };
        let msg = lines.join("\n");
        match send_to(target, msg.as_bytes()) {
            Ok(_) => {
                self.failures = 0;
                true
            }
            Err(e) => {
                if self.failures.is_multiple_of(100) {
                    warn!("cannot notify systemd ({msg:?} to {target:?}): {e}");
                }
                self.failures = self.failures.wrapping_add(1);
                false
            }
        }
    }

    /// `READY=1`: the VIPs serve (or are known not to), with why in `status`.
    /// Whether systemd was told (when not, the caller tries again).
    pub fn ready(&mut self, status: &str) -> bool {
        if !self.send(&["READY=1".into()]) {
            return false;
        }
        self.last_status = None;
        self.status(status);
        true
    }

    /// `RELOADING=1`: a reload starts; `ready` when it has ended.
    pub fn reloading(&mut self) {
        self.send(&[
            "RELOADING=1".into(),
            // systemd 253 and later need it with RELOADING=1 to tell this
            // reload from an earlier one; older ones ignore it.
            format!("MONOTONIC_USEC={}", crate::util::monotonic_ns() / 1000),
            "STATUS=reloading the config".into(),
        ]);
        self.last_status = None;
    }

    /// `STOPPING=1`, with what happens to the data path.
    pub fn stopping(&mut self, status: &str) {
        if self.send(&["STOPPING=1".into()]) {
            self.last_status = None;
            self.status(status);
        }
    }

    /// `STATUS=`, only when it changed since the last one sent.
    pub fn status(&mut self, status: &str) {
        if self.last_status.as_deref() == Some(status) {
            return;
        }
        if self.send(&[format!("STATUS={}", status_field(status))]) {
            self.last_status = Some(status.to_owned());
        }
    }

    /// `WATCHDOG=1`: the main loop is alive.
    pub fn watchdog(&mut self) {
        if self.watchdog.is_some() {
            self.send(&["WATCHDOG=1".into()]);
        }
    }
}

/// A status on one line (each line of the datagram is a field), at most
/// `STATUS_MAX` bytes, cut at a character boundary.
fn status_field(s: &str) -> String {
    let line = s.replace('\n', "; ");
    if line.len() <= STATUS_MAX {
        return line;
    }
    let mut end = STATUS_MAX - "…".len();
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &line[..end])
}

fn send_to(target: &Target, msg: &[u8]) -> io::Result<usize> {
    let sock = UnixDatagram::unbound()?;
    sock.set_nonblocking(true)?;
    match target {
        Target::Path(p) => sock.send_to(msg, p),
        Target::Abstract(name) => {
            use std::os::linux::net::SocketAddrExt as _;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(msg, &addr)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recv(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 4096];
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    fn listener() -> (UnixDatagram, PathBuf) {
        let path = std::env::temp_dir().join(format!(
            "stickylb-notify-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        (sock, path)
    }

    #[test]
    fn ready_reloading_and_stopping_reach_a_path_socket() {
        let (sock, path) = listener();
        let mut n = Notifier::new(Some(path.as_os_str()), None, None, 1);
        assert!(n.enabled());
        assert!(n.ready("serving 1 VIP: web (3 of 3 backends up)"));
        assert_eq!(recv(&sock), "READY=1");
        assert_eq!(
            recv(&sock),
            "STATUS=serving 1 VIP: web (3 of 3 backends up)"
        );
        n.reloading();
        let got = recv(&sock);
        let lines: Vec<&str> = got.lines().collect();
        assert_eq!(lines[0], "RELOADING=1");
        let usec: u64 = lines[1]
            .strip_prefix("MONOTONIC_USEC=")
            .unwrap()
            .parse()
            .unwrap();
        assert!(usec > 0);
        assert_eq!(lines[2], "STATUS=reloading the config");
        n.stopping("stopping on SIGTERM\nthe program keeps forwarding");
        assert_eq!(recv(&sock), "STOPPING=1");
        assert_eq!(
            recv(&sock),
            "STATUS=stopping on SIGTERM; the program keeps forwarding"
        );
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_status_is_sent_only_when_it_changes() {
        let (sock, path) = listener();
        let mut n = Notifier::to_path(&path);
        n.ready("a");
        assert_eq!(recv(&sock), "READY=1");
        assert_eq!(recv(&sock), "STATUS=a");
        n.status("a");
        n.status("b");
        n.status("b");
        n.status("c");
        assert_eq!(recv(&sock), "STATUS=b", "the unchanged 'a' was sent again");
        assert_eq!(recv(&sock), "STATUS=c", "the unchanged 'b' was sent again");
        // After a reload the status is sent again even if it is the same.
        n.reloading();
        let _ = recv(&sock);
        n.status("c");
        assert_eq!(recv(&sock), "STATUS=c");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn an_abstract_socket_is_reached_by_its_at_name() {
        use std::os::linux::net::SocketAddrExt as _;
        let name = format!(
            "stickylb-notify-test-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        );
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let sock = UnixDatagram::bind_addr(&addr).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let env = format!("@{name}");
        let mut n = Notifier::new(Some(OsStr::new(&env)), None, None, 1);
        n.ready("ok");
        assert_eq!(recv(&sock), "READY=1");
        assert_eq!(recv(&sock), "STATUS=ok");
    }

    #[test]
    fn without_a_socket_nothing_is_sent_and_nothing_fails() {
        let mut n = Notifier::new(None, Some("1000000"), None, 1);
        assert!(!n.enabled());
        assert!(n.ready("x"), "nothing to tell is not a failure");
        n.watchdog();
        let n = Notifier::new(Some(OsStr::new("relative/path")), None, None, 1);
        assert!(!n.enabled(), "not a path nor an abstract name");
    }

    #[test]
    fn the_watchdog_is_for_the_named_pid_only_and_pinged_at_half_its_timeout() {
        let n = Notifier::new(None, Some("10000000"), None, 42);
        assert_eq!(n.watchdog_every(), Some(Duration::from_secs(5)));
        let n = Notifier::new(None, Some("10000000"), Some("42"), 42);
        assert_eq!(n.watchdog_every(), Some(Duration::from_secs(5)));
        let n = Notifier::new(None, Some("10000000"), Some("43"), 42);
        assert_eq!(n.watchdog_every(), None, "another process's watchdog");
        let n = Notifier::new(None, Some("0"), None, 42);
        assert_eq!(n.watchdog_every(), None);
        let n = Notifier::new(None, None, None, 42);
        assert_eq!(n.watchdog_every(), None);
    }

    #[test]
    fn a_long_status_is_cut_so_that_systemd_does_not_drop_the_notification() {
        let (sock, path) = listener();
        let mut n = Notifier::to_path(&path);
        let vips: Vec<String> = (0..300)
            .map(|i| format!("vip-{i}-é: NO ALIVE BACKEND (0 of 12)"))
            .collect();
        assert!(n.ready(&vips.join("; ")));
        assert_eq!(recv(&sock), "READY=1", "READY=1 travels on its own");
        let status = recv(&sock);
        assert!(
            status.len() <= "STATUS=".len() + STATUS_MAX,
            "{}",
            status.len()
        );
        assert!(status.starts_with("STATUS=vip-0-é") && status.ends_with('…'));
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_ready_that_cannot_be_sent_says_so_and_is_sent_later() {
        let path = std::env::temp_dir().join(format!(
            "stickylb-notify-gone-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        let mut n = Notifier::to_path(&path);
        assert!(!n.ready("a"), "sent to a socket that does not exist");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert!(n.ready("a"));
        assert_eq!(recv(&sock), "READY=1");
        assert_eq!(recv(&sock), "STATUS=a");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn watchdog_pings_reach_the_socket() {
        let (sock, path) = listener();
        let mut n = Notifier::new(Some(path.as_os_str()), Some("2000000"), None, 1);
        n.watchdog();
        assert_eq!(recv(&sock), "WATCHDOG=1");
        n.watchdog = None;
        n.watchdog();
        n.status("after");
        assert_eq!(recv(&sock), "STATUS=after", "a ping without a watchdog");
        std::fs::remove_file(&path).unwrap();
    }
}
