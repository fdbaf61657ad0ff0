//! What a running daemon holds and leaves for others to find.
//!
//! - The lock on its pin folder: one daemon per `pin_path`. It is an
//!   flock(2) on the folder itself (bpffs holds no regular files, but a
//!   folder can be locked), so the kernel drops it when the daemon dies,
//!   kill -9 included: a dead daemon never blocks the next one. Who holds
//!   it is read back from /proc/locks, which the kernel keeps true.
//! - Its runtime record, `/run/stickylb/daemons/<pin path>.json`: pid,
//!   config file, control socket, pin path. The CLI finds the daemon by
//!   config file through it, whatever the file says now (a changed
//!   `control_socket`, a syntax error). A record counts only while its pid
//!   holds the lock on its pin path, so one left by a killed daemon (or a
//!   reused pid) is ignored, and the next daemon removes it.

use std::{
    fs::File,
    io,
    io::Write as _,
    os::{
        fd::AsRawFd as _,
        unix::fs::{
            DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _,
        },
    },
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Where running daemons leave their records.
pub const RECORD_DIR: &str = "/run/stickylb/daemons";

#[derive(Debug, Error)]
pub enum LockError {
    #[error(
        "pin_path {} is in use by another stickylb process ({}): a daemon, or a `stickylb \
         unload` taking its pins down. Only one may hold a pin_path, and this one has changed \
         nothing. To replace a daemon, stop it first (`stickylb stop`: its program keeps \
         forwarding, and this daemon then adopts it); to run a second load balancer, give it \
         its own pin_path",
        path.display(),
        describe_holder(*pid, holder.as_deref())
    )]
    Held {
        path: PathBuf,
        /// The holder's pid, when /proc/locks names it.
        pid: Option<u32>,
        /// The holder's runtime record, if it left one.
        holder: Option<Box<Record>>,
    },
    #[error("cannot lock the pin folder {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn describe_holder(pid: Option<u32>, record: Option<&Record>) -> String {
    let mut s = match pid {
        Some(p) => format!("pid {p}"),
        None => "pid unknown".to_owned(),
    };
    if let Some(r) = record {
        s += &format!(
            ", config {}, control socket {}",
            r.config.display(),
            r.control_socket.display()
        );
    }
    s
}

/// The lock on a pin folder, held while this lives (and across nothing
/// else: the descriptor is close-on-exec, so no child process keeps it).
#[derive(Debug)]
pub struct PinLock {
    _dir: File,
}

impl PinLock {
    /// Takes the lock on the folder `dir` (which must exist), or says who
    /// holds it.
    pub fn acquire(dir: &Path) -> Result<Self, LockError> {
        let io_err = |source| LockError::Io {
            path: dir.to_owned(),
            source,
        };
        let file = File::open(dir).map_err(io_err)?;
        // SAFETY: flock(2) on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(Self { _dir: file });
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(io_err(e));
        }
        let pid = holder(dir);
        let record = pid
            .and_then(|p| {
                Record::read(&Record::path_in(Path::new(RECORD_DIR), dir)).filter(|r| r.pid == p)
            })
            .map(Box::new);
        Err(LockError::Held {
            path: dir.to_owned(),
            pid,
            holder: record,
        })
    }

    /// `acquire`, waiting up to `timeout` for a holder to let go.
    pub fn acquire_within(dir: &Path, timeout: Duration) -> Result<Self, LockError> {
        let end = Instant::now() + timeout;
        loop {
            match Self::acquire(dir) {
                Err(LockError::Held { .. }) if Instant::now() < end => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => return other,
            }
        }
    }
}

/// The path a daemon is recorded and found by for config file `config`:
/// canonical, or absolute when it cannot be resolved (moved or deleted).
pub fn config_key(config: &Path) -> PathBuf {
    std::fs::canonicalize(config)
        .or_else(|_| std::path::absolute(config))
        .unwrap_or_else(|_| config.to_owned())
}

/// The pid holding an flock(2) on `path`, as /proc/locks says.
pub fn holder(path: &Path) -> Option<u32> {
    let meta = std::fs::metadata(path).ok()?;
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    holder_in(&locks, meta.dev(), meta.ino())
}

/// Where the lock that daemon `pid` holds on its pin folder `pin_path` can
/// be seen from this process: the folder itself, or, when the daemon runs
/// in another mount namespace whose bpffs this one does not see (a command
/// run with `ip netns exec` has a fresh /sys of its own), the same folder
/// through the daemon's root, /proc/PID/root. None when `pid` holds no such
/// lock (it has exited).
pub fn lock_seen_at(pid: u32, pin_path: &Path) -> Option<PathBuf> {
    if holder(pin_path) == Some(pid) {
        return Some(pin_path.to_owned());
    }
    let through_root = Path::new("/proc")
        .join(pid.to_string())
        .join("root")
        .join(pin_path.strip_prefix("/").unwrap_or(pin_path));
    (holder(&through_root) == Some(pid)).then_some(through_root)
}

/// The pid of the FLOCK in `locks` (the text of /proc/locks) on the file
/// `dev`/`ino`. A line is `1: FLOCK  ADVISORY  WRITE 1234 00:27:5678 0 EOF`
/// (device numbers in hex); a waiter's line has `->` after the number.
fn holder_in(locks: &str, dev: u64, ino: u64) -> Option<u32> {
    let want = format!("{:02x}:{:02x}:{ino}", libc::major(dev), libc::minor(dev));
    locks.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            [_, "FLOCK", _, _, pid, file, ..] if *file == want => pid.parse().ok(),
            _ => None,
        }
    })
}

/// What a running daemon tells the CLI about itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub pid: u32,
    /// Its config file, canonical.
    pub config: PathBuf,
    pub control_socket: PathBuf,
    pub pin_path: PathBuf,
    pub interface: String,
}

impl Record {
    /// The record of the daemon on `pin_path`, in `dir`: the path with `/`
    /// as `-` and anything else unusual escaped (systemd's rule), so two
    /// pin paths never share a record.
    pub fn path_in(dir: &Path, pin_path: &Path) -> PathBuf {
        let text = pin_path.to_string_lossy();
        let mut name = String::new();
        for (i, b) in text.trim_matches('/').bytes().enumerate() {
            match b {
                b'/' => name.push('-'),
                b'.' if i == 0 => name.push_str("\\x2e"),
                b if b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b':' => {
                    name.push(b as char)
                }
                b => name.push_str(&format!("\\x{b:02x}")),
            }
        }
        if name.is_empty() {
            name.push('-');
        }
        dir.join(format!("{name}.json"))
    }

    /// The record at `path`, if it can be trusted: root's CLI signals the
    /// pid it names and talks to the socket it names, so a record (or a
    /// records folder) that someone else could have written is ignored.
    fn read(path: &Path) -> Option<Self> {
        let file = File::open(path).ok()?;
        if !trusted(&file.metadata().ok()?) || !path.parent().is_some_and(trusted_dir) {
            return None;
        }
        serde_json::from_reader(io::BufReader::new(file)).ok()
    }

    /// The record of the daemon that holds the lock on `pin_path` now.
    pub fn of_pin_path(dir: &Path, pin_path: &Path) -> Option<Self> {
        let pid = holder(pin_path)?;
        Self::read(&Self::path_in(dir, pin_path)).filter(|r| r.pid == pid)
    }

    /// Whether the daemon that wrote this still runs: its pid holds the
    /// lock on its pin path.
    pub fn is_live(&self) -> bool {
        lock_seen_at(self.pid, &self.pin_path).is_some()
    }

    /// Whether its process exists but this one may not look at its root
    /// (a daemon under a unit whose sandbox hides other processes, looking
    /// at one started by hand in another mount namespace): it may be live,
    /// so its record is kept.
    fn out_of_sight(&self) -> bool {
        let proc = Path::new("/proc").join(self.pid.to_string());
        proc.exists()
            && std::fs::metadata(proc.join("root/"))
                .is_err_and(|e| e.kind() == io::ErrorKind::PermissionDenied)
    }

    /// Writes the record into `dir` (removing records of daemons that are
    /// gone); it is removed again when the guard drops.
    pub fn publish(&self, dir: &Path) -> io::Result<RecordGuard> {
        // Modes set explicitly: under a lax umask the folder or the file
        // would otherwise be writable by anyone, who could then point root's
        // CLI at their own socket or pid.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
        for (path, r) in Self::all_in(dir) {
            if !r.is_live() && !r.out_of_sight() {
                let _ = std::fs::remove_file(path);
            }
        }
        let path = Self::path_in(dir, &self.pin_path);
        let tmp = path.with_extension("json.tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)?;
        file.set_permissions(std::fs::Permissions::from_mode(0o644))?;
        file.write_all(serde_json::to_string_pretty(self)?.as_bytes())?;
        drop(file);
        std::fs::rename(&tmp, &path)?;
        Ok(RecordGuard { path })
    }

    fn all_in(dir: &Path) -> Vec<(PathBuf, Self)> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .filter_map(|p| Self::read(&p).map(|r| (p, r)))
            .collect()
    }

    /// Every record in `dir` whose daemon still runs.
    pub fn live_in(dir: &Path) -> Vec<Self> {
        Self::all_in(dir)
            .into_iter()
            .map(|(_, r)| r)
            .filter(Self::is_live)
            .collect()
    }

    /// The running daemon started with the config file `config`. A file
    /// that has since moved or gone is matched by its absolute path, as the
    /// daemon recorded it when it could not canonicalize it either.
    pub fn find_by_config(dir: &Path, config: &Path) -> Option<Self> {
        let config = config_key(config);
        Self::live_in(dir).into_iter().find(|r| r.config == config)
    }
}

/// Written by root or by us, and by nobody else.
fn trusted(meta: &std::fs::Metadata) -> bool {
    // SAFETY: geteuid(2) cannot fail.
    let euid = unsafe { libc::geteuid() };
    (meta.uid() == 0 || meta.uid() == euid) && meta.mode() & 0o022 == 0
}

fn trusted_dir(dir: &Path) -> bool {
    std::fs::metadata(dir).is_ok_and(|m| trusted(&m))
}

/// Removes a published record on drop (a clean exit).
#[derive(Debug)]
pub struct RecordGuard {
    path: PathBuf,
}

impl Drop for RecordGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("stickylb-rt-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_held_lock_names_its_holder_and_is_free_once_dropped() {
        let dir = scratch("lock");
        let pin = dir.join("pins");
        std::fs::create_dir(&pin).unwrap();
        let first = PinLock::acquire(&pin).unwrap();
        // flock conflicts between open files, even in one process.
        match PinLock::acquire(&pin) {
            Err(e @ LockError::Held { pid, .. }) => {
                assert_eq!(pid, Some(std::process::id()));
                let msg = e.to_string();
                assert!(
                    msg.contains(&format!("pid {}", std::process::id()))
                        && msg.contains(&pin.display().to_string())
                        && msg.contains("stickylb stop"),
                    "{msg}"
                );
            }
            other => panic!("second lock: {other:?}"),
        }
        assert_eq!(holder(&pin), Some(std::process::id()));
        drop(first);
        assert_eq!(holder(&pin), None);
        let again = PinLock::acquire_within(&pin, Duration::from_millis(100)).unwrap();
        drop(again);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn proc_locks_lines_are_matched_by_device_and_inode() {
        let text = "1: FLOCK  ADVISORY  WRITE 14369 00:27:12598847 0 EOF\n\
                    1: -> FLOCK  ADVISORY  WRITE 15000 00:27:12598847 0 EOF\n\
                    2: POSIX  ADVISORY  WRITE 99 00:27:5 0 EOF\n\
                    3: FLOCK  ADVISORY  WRITE 77 fd:01:5 0 EOF\n";
        assert_eq!(holder_in(text, 39, 12598847), Some(14369));
        assert_eq!(holder_in(text, 39, 5), None);
        let dev = libc::makedev(0xfd, 1);
        assert_eq!(holder_in(text, dev, 5), Some(77));
    }

    #[test]
    fn record_names_are_distinct_per_pin_path() {
        let d = Path::new("/run/x");
        assert_eq!(
            Record::path_in(d, Path::new("/sys/fs/bpf/stickylb")),
            d.join("sys-fs-bpf-stickylb.json")
        );
        assert_ne!(
            Record::path_in(d, Path::new("/sys/fs/bpf/a-b/c")),
            Record::path_in(d, Path::new("/sys/fs/bpf/a/b-c"))
        );
        assert_eq!(Record::path_in(d, Path::new("/")), d.join("-.json"));
    }

    #[test]
    fn only_records_of_running_daemons_are_found() {
        let dir = scratch("records");
        let pin = dir.join("pins");
        std::fs::create_dir(&pin).unwrap();
        let config = dir.join("stickylb.toml");
        std::fs::write(&config, "").unwrap();
        let records = dir.join("daemons");
        let r = Record {
            pid: std::process::id(),
            config: std::fs::canonicalize(&config).unwrap(),
            control_socket: dir.join("ctl.sock"),
            pin_path: pin.clone(),
            interface: "eth0".into(),
        };
        let guard = r.publish(&records).unwrap();
        // Written, but its pid holds no lock: a dead daemon's record.
        assert_eq!(Record::find_by_config(&records, &config), None);
        let lock = PinLock::acquire(&pin).unwrap();
        assert_eq!(Record::find_by_config(&records, &config), Some(r.clone()));
        assert_eq!(Record::find_by_config(&records, &dir), None);
        drop(lock);
        assert!(Record::live_in(&records).is_empty());
        // The next daemon's publish removes the stale one.
        let other = Record {
            pin_path: dir.clone(),
            ..r.clone()
        };
        let _g = other.publish(&records).unwrap();
        assert!(!Record::path_in(&records, &pin).exists());
        drop(guard);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn records_are_not_writable_by_others_whatever_the_umask() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = scratch("modes");
        let records = dir.join("daemons");
        let r = Record {
            pid: std::process::id(),
            config: dir.join("stickylb.toml"),
            control_socket: dir.join("ctl.sock"),
            pin_path: dir.join("pins"),
            interface: "eth0".into(),
        };
        // SAFETY: umask(2) cannot fail. Process-wide: restored at once.
        let old = unsafe { libc::umask(0) };
        let guard = r.publish(&records);
        unsafe { libc::umask(old) };
        let _guard = guard.unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&records), 0o755);
        assert_eq!(mode(&Record::path_in(&records, &r.pin_path)), 0o644);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_record_others_could_write_is_ignored() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = scratch("forged");
        let pin = dir.join("pins");
        std::fs::create_dir(&pin).unwrap();
        let records = dir.join("daemons");
        let r = Record {
            pid: std::process::id(),
            config: dir.join("stickylb.toml"),
            control_socket: dir.join("evil.sock"),
            pin_path: pin.clone(),
            interface: "eth0".into(),
        };
        let _guard = r.publish(&records).unwrap();
        let _lock = PinLock::acquire(&pin).unwrap();
        assert_eq!(Record::live_in(&records), vec![r.clone()]);
        let file = Record::path_in(&records, &pin);
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(
            Record::live_in(&records).is_empty(),
            "a 0666 record was read"
        );
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(&records, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(
            Record::live_in(&records).is_empty(),
            "a record in a 0777 folder was read"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_moved_config_file_still_finds_its_daemon() {
        let dir = scratch("moved");
        let pin = dir.join("pins");
        std::fs::create_dir(&pin).unwrap();
        let records = dir.join("daemons");
        // The daemon could not canonicalize it either: the file is gone.
        let config = dir.join("gone.toml");
        let r = Record {
            pid: std::process::id(),
            config: config.clone(),
            control_socket: dir.join("ctl.sock"),
            pin_path: pin.clone(),
            interface: "eth0".into(),
        };
        let _guard = r.publish(&records).unwrap();
        let _lock = PinLock::acquire(&pin).unwrap();
        assert_eq!(Record::find_by_config(&records, &config), Some(r));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
