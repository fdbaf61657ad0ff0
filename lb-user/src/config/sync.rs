//! `[sync]`: the affinity sync with peer nodes (docs/config.md,
//! docs/scale-out.md). Absent: no sync, the node stands alone.

use std::{
    net::SocketAddrV4,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use super::{Config, Problems, raw};
use crate::sync::wire::{Key, MAX_ENTRIES_PER_FRAME, MIN_KEY_LEN};

pub const DEFAULT_SYNC_MAX_RATE: u32 = 100_000;
pub const DEFAULT_SYNC_MAX_QUEUE: u32 = 200_000;
pub const DEFAULT_SYNC_BATCH: u32 = 512;
pub const DEFAULT_SYNC_FLUSH: Duration = Duration::from_millis(20);
pub const DEFAULT_SYNC_REFRESH: Duration = Duration::from_secs(30);
pub const DEFAULT_SYNC_JOIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The resolved `[sync]` section.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SyncConfig {
    /// Where peers connect to this node; also its name to them.
    pub listen: SocketAddrV4,
    /// The other nodes' `listen` addresses.
    pub peers: Vec<SocketAddrV4>,
    /// The shared secret every node of the cluster holds.
    pub key_file: PathBuf,
    /// Entries per second sent to one peer, at most.
    pub max_rate: u32,
    /// Entries waiting for one peer, at most (the oldest are dropped).
    pub max_queue: u32,
    /// Entries in one batch, at most.
    pub batch: u32,
    /// How long an entry waits for its batch to fill.
    #[serde(serialize_with = "raw::ser_duration")]
    pub flush_interval: Duration,
    /// How often the data path announces a busy client's pin again.
    #[serde(serialize_with = "raw::ser_duration")]
    pub refresh_interval: Duration,
    /// How long a joining node waits for a peer's table.
    #[serde(serialize_with = "raw::ser_duration")]
    pub join_timeout: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSync {
    listen: SocketAddrV4,
    #[serde(default)]
    peers: Vec<SocketAddrV4>,
    key_file: PathBuf,
    #[serde(default = "default_max_rate")]
    max_rate: u32,
    #[serde(default = "default_max_queue")]
    max_queue: u32,
    #[serde(default = "default_batch")]
    batch: u32,
    #[serde(default = "default_flush", deserialize_with = "raw::de_duration")]
    flush_interval: Duration,
    #[serde(default = "default_refresh", deserialize_with = "raw::de_duration")]
    refresh_interval: Duration,
    #[serde(
        default = "default_join_timeout",
        deserialize_with = "raw::de_duration"
    )]
    join_timeout: Duration,
}

fn default_max_rate() -> u32 {
    DEFAULT_SYNC_MAX_RATE
}
fn default_max_queue() -> u32 {
    DEFAULT_SYNC_MAX_QUEUE
}
fn default_batch() -> u32 {
    DEFAULT_SYNC_BATCH
}
fn default_flush() -> Duration {
    DEFAULT_SYNC_FLUSH
}
fn default_refresh() -> Duration {
    DEFAULT_SYNC_REFRESH
}
fn default_join_timeout() -> Duration {
    DEFAULT_SYNC_JOIN_TIMEOUT
}

impl RawSync {
    pub(super) fn resolve(self) -> SyncConfig {
        SyncConfig {
            listen: self.listen,
            peers: self.peers,
            key_file: self.key_file,
            max_rate: self.max_rate,
            max_queue: self.max_queue,
            batch: self.batch,
            flush_interval: self.flush_interval,
            refresh_interval: self.refresh_interval,
            join_timeout: self.join_timeout,
        }
    }
}

const MAX_FLUSH: Duration = Duration::from_secs(1);
const MIN_REFRESH: Duration = Duration::from_secs(1);
const MAX_JOIN_TIMEOUT: Duration = Duration::from_secs(600);
const MAX_QUEUE: u32 = 10_000_000;

impl Config {
    pub(super) fn validate_sync(&self, out: &mut Problems) {
        let Some(s) = &self.sync else { return };
        let ip = s.listen.ip();
        if ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() {
            out.push(
                "sync.listen",
                format!(
                    "{ip} is not one host's address: listen is also this node's name in \
                     its hello, which its peers check against their sync.peers; give the \
                     address they list for it, e.g. \"10.0.0.1:7946\""
                ),
            );
        }
        if s.listen.port() == 0 {
            out.push(
                "sync.listen",
                "port 0: give the port peers connect to, e.g. \"10.0.0.1:7946\"",
            );
        }
        for (i, p) in s.peers.iter().enumerate() {
            if *p == s.listen {
                out.push(
                    "sync.peers",
                    format!("{p} is this node's own listen address: list the other nodes only"),
                );
            } else if s.peers[..i].contains(p) {
                out.push("sync.peers", format!("{p} is listed twice"));
            }
            if p.ip().is_unspecified() || p.port() == 0 {
                out.push(
                    "sync.peers",
                    format!("{p}: give a peer's address and port, as in its sync.listen"),
                );
            }
        }
        if !s.key_file.is_absolute() {
            out.push(
                "sync.key_file",
                format!("{:?} is relative; use an absolute path", s.key_file),
            );
        }
        if s.max_rate == 0 {
            out.push(
                "sync.max_rate",
                "0 would send nothing: give entries per second, e.g. 100000",
            );
        }
        if s.max_queue == 0 || s.max_queue > MAX_QUEUE {
            out.push(
                "sync.max_queue",
                format!("{} is out of range: 1 to {MAX_QUEUE}", s.max_queue),
            );
        }
        if s.batch == 0 || s.batch as usize > MAX_ENTRIES_PER_FRAME {
            out.push(
                "sync.batch",
                format!(
                    "{} is out of range: 1 to {MAX_ENTRIES_PER_FRAME} (one frame)",
                    s.batch
                ),
            );
        }
        if s.flush_interval.is_zero() || s.flush_interval > MAX_FLUSH {
            out.push(
                "sync.flush_interval",
                "is out of range: above 0 and at most 1s (it is the latency added to every entry)",
            );
        }
        if s.refresh_interval < MIN_REFRESH {
            out.push(
                "sync.refresh_interval",
                "is below 1s: every busy client would be sent again that often",
            );
        }
        if s.join_timeout.is_zero() || s.join_timeout > MAX_JOIN_TIMEOUT {
            out.push(
                "sync.join_timeout",
                "is out of range: above 0 and at most 10m",
            );
        }
        for (i, vip) in self.vips.iter().enumerate() {
            if s.refresh_interval > vip.affinity_timeout / 2 {
                out.push(
                    "sync.refresh_interval",
                    format!(
                        "{} is more than half the affinity_timeout of {}: peers' copies of \
                         a busy client's pin could expire before it is sent again (one \
                         refresh lost or late is enough); make it at most half of it",
                        crate::fmt::fmt_duration(s.refresh_interval),
                        super::validate::vip_label(i, &vip.name)
                    ),
                );
            }
        }
    }

    /// What `check` says of the key file on this machine.
    pub(super) fn check_sync_environment(&self, out: &mut Problems) {
        if let Some(s) = &self.sync
            && let Err(e) = load_key(&s.key_file)
        {
            out.push("sync.key_file", e);
        }
    }
}

/// How to make a key file, for the messages that refuse one.
fn how_to_make(path: &Path) -> String {
    format!(
        "make one on one node with `umask 077; head -c 32 /dev/urandom | base64 > {p}` and copy \
         it to every node (owned by root, mode 0600)",
        p = path.display()
    )
}

/// Reads the shared key, refusing a file others could read or replace, and
/// a key too short to stand up to guessing. The file's bytes are the key
/// (a trailing newline excluded), whatever their encoding.
pub fn load_key(path: &Path) -> Result<Key, String> {
    let meta = std::fs::metadata(path).map_err(|e| {
        format!(
            "cannot read {} ({e}): {}",
            path.display(),
            how_to_make(path)
        )
    })?;
    if !meta.is_file() {
        return Err(format!("{} is not a file", path.display()));
    }
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != 0 && meta.uid() != me {
        return Err(format!(
            "{} is owned by uid {}, neither root nor this process (uid {me}), who could \
             replace the key: `chown root: {}`",
            path.display(),
            meta.uid(),
            path.display()
        ));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(format!(
            "{} is readable or writable by group or others (mode {:o}), who could learn the \
             key and forge sync messages: `chmod 600 {}`",
            path.display(),
            meta.mode() & 0o777,
            path.display()
        ));
    }
    let mut bytes =
        std::fs::read(path).map_err(|e| format!("cannot read {} ({e})", path.display()))?;
    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        bytes.pop();
    }
    let len = bytes.len();
    Key::new(bytes).ok_or_else(|| {
        format!(
            "{} holds {len} bytes; a key needs at least {MIN_KEY_LEN}: {}",
            path.display(),
            how_to_make(path)
        )
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;
    use crate::config::testutil::*;

    fn with_sync(lines: &str) -> String {
        doc(
            "",
            "",
            &format!("\n[sync]\nkey_file = \"/etc/stickylb/sync.key\"\n{lines}"),
        )
    }

    #[test]
    fn absent_means_no_sync() {
        assert_eq!(parse(MINIMAL).sync, None);
    }

    #[test]
    fn defaults_are_filled_in() {
        let c = parse(&with_sync(
            "listen = \"10.0.0.1:7946\"\npeers = [\"10.0.0.2:7946\"]",
        ));
        let s = c.sync.unwrap();
        assert_eq!(s.listen, "10.0.0.1:7946".parse().unwrap());
        assert_eq!(s.peers, vec!["10.0.0.2:7946".parse().unwrap()]);
        assert_eq!(s.max_rate, DEFAULT_SYNC_MAX_RATE);
        assert_eq!(s.max_queue, DEFAULT_SYNC_MAX_QUEUE);
        assert_eq!(s.batch, DEFAULT_SYNC_BATCH);
        assert_eq!(s.flush_interval, DEFAULT_SYNC_FLUSH);
        assert_eq!(s.refresh_interval, DEFAULT_SYNC_REFRESH);
        assert_eq!(s.join_timeout, DEFAULT_SYNC_JOIN_TIMEOUT);
    }

    #[test]
    fn a_printed_config_with_sync_loads_back() {
        let c = parse(&with_sync(
            "listen = \"10.0.0.1:7946\"\npeers = [\"10.0.0.2:7946\"]\nflush_interval = \"5ms\"",
        ));
        let text = toml::to_string(&c).unwrap();
        assert_eq!(parse(&text), c);
    }

    #[test]
    fn duplicate_peers_and_our_own_address_are_refused() {
        let p = problems(&with_sync(
            "listen = \"10.0.0.1:7946\"\npeers = [\"10.0.0.2:7946\", \"10.0.0.2:7946\", \"10.0.0.1:7946\"]",
        ));
        assert_eq!(p.len(), 2, "{p:#?}");
        assert!(
            p[0].starts_with("sync.peers: ") && p[0].contains("twice"),
            "{p:?}"
        );
        assert!(p[1].contains("own listen address"), "{p:?}");
    }

    #[test]
    fn a_listen_address_that_names_no_host_is_refused() {
        for ip in ["0.0.0.0", "224.0.0.5", "255.255.255.255"] {
            let p = problems(&with_sync(&format!("listen = \"{ip}:7946\"")));
            assert!(
                p.iter()
                    .any(|m| m.starts_with("sync.listen: ") && m.contains("name in its hello")),
                "{ip}: {p:#?}"
            );
        }
        parse(&with_sync("listen = \"10.0.0.1:7946\""));
    }

    #[test]
    fn bounds_are_checked() {
        let p = problems(&with_sync(
            "listen = \"10.0.0.1:7946\"\nmax_rate = 0\nmax_queue = 0\nbatch = 100000\n\
             flush_interval = \"5s\"\nrefresh_interval = \"10m\"\njoin_timeout = \"0s\"",
        ));
        for field in [
            "max_rate",
            "max_queue",
            "batch",
            "flush_interval",
            "refresh_interval",
            "join_timeout",
        ] {
            assert!(
                p.iter().any(|m| m.starts_with(&format!("sync.{field}: "))),
                "{field} not refused: {p:#?}"
            );
        }
    }

    #[test]
    fn refresh_must_be_below_every_affinity_timeout() {
        let text = doc(
            "",
            "affinity_timeout = \"20s\"",
            "\n[sync]\nkey_file = \"/k\"\nlisten = \"10.0.0.1:7946\"",
        );
        assert_only_problem(
            &text,
            "sync.refresh_interval",
            "affinity_timeout of vip \"web\"",
        );
        // At most half of it: 30 s against 59 s is refused, against 60 s not.
        let at = |timeout: &str| {
            doc(
                "",
                &format!("affinity_timeout = \"{timeout}\""),
                "\n[sync]\nkey_file = \"/k\"\nlisten = \"10.0.0.1:7946\"",
            )
        };
        let p = problems(&at("59s"));
        assert!(
            p.iter().any(|m| m.contains("half the affinity_timeout")),
            "{p:?}"
        );
        parse(&at("60s"));
    }

    #[test]
    fn the_key_file_must_be_private_and_long_enough() {
        let dir = TempDir::new("sync-key");
        let path = dir.0.join("sync.key");
        std::fs::write(&path, "short\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = load_key(&path).unwrap_err();
        assert!(
            e.contains("holds 5 bytes") && e.contains("head -c 32 /dev/urandom"),
            "{e}"
        );

        std::fs::write(&path, format!("{}\n", "k".repeat(44))).unwrap();
        assert!(load_key(&path).is_ok());

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = load_key(&path).unwrap_err();
        assert!(
            e.contains("group or others") && e.contains("chmod 600"),
            "{e}"
        );

        let e = load_key(&dir.0.join("missing")).unwrap_err();
        assert!(e.contains("head -c 32 /dev/urandom"), "{e}");
    }
}
