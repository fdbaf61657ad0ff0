//! The daemon's file-descriptor limit: raised at start, so that a burst of
//! connections cannot starve the health checks, and put back for the
//! commands of exec checks, which were written for the usual limit.

use std::sync::atomic::{AtomicU64, Ordering};

use log::{info, warn};

/// The soft RLIMIT_NOFILE the daemon was started with, once it raised it;
/// `u64::MAX` while it has not.
static INHERITED_SOFT: AtomicU64 = AtomicU64::new(u64::MAX);

/// Raises the soft RLIMIT_NOFILE to the hard limit and logs both. systemd
/// starts services with a soft limit of 1024 and a hard one far above: the
/// soft limit is kept low for programs that use select(2), which the daemon
/// does not.
pub fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid out-pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        warn!(
            "cannot read RLIMIT_NOFILE: {}",
            std::io::Error::last_os_error()
        );
        return;
    }
    let soft = lim.rlim_cur;
    // An unlimited hard limit cannot be the soft one: the kernel caps
    // descriptors at fs.nr_open.
    let hard = if lim.rlim_max == libc::RLIM_INFINITY {
        std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(soft)
    } else {
        lim.rlim_max
    };
    if soft >= hard {
        info!(
            "RLIMIT_NOFILE: {soft} file descriptors (hard limit {}): cannot be raised; if \
             connections to the metrics or control socket crowd it, raise LimitNOFILE",
            lim.rlim_max
        );
        return;
    }
    let raised = libc::rlimit {
        rlim_cur: hard,
        rlim_max: lim.rlim_max,
    };
    // SAFETY: a valid rlimit; only this process's limit changes.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        warn!(
            "RLIMIT_NOFILE: cannot raise the soft limit from {soft} to {hard} ({}); keeping {soft}",
            std::io::Error::last_os_error()
        );
        return;
    }
    INHERITED_SOFT.store(soft, Ordering::Relaxed);
    info!("RLIMIT_NOFILE: soft limit raised from {soft} to the hard limit {hard}");
}

/// The limit a child should run with: the one the daemon inherited, if it
/// raised its own.
pub(crate) fn for_children() -> Option<libc::rlimit> {
    let soft = INHERITED_SOFT.load(Ordering::Relaxed);
    if soft == u64::MAX {
        return None;
    }
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid out-pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return None;
    }
    lim.rlim_cur = soft;
    Some(lim)
}
