//! Why a probe failed, and whether the backend is to blame.

use std::io;

use super::io_detail;

/// Why a probe failed.
#[derive(Debug)]
pub(super) struct Failure {
    pub(super) detail: String,
    /// This host's problem, not the backend's (see `Outcome::local`).
    pub(super) local: bool,
}

impl From<String> for Failure {
    fn from(detail: String) -> Self {
        Self {
            detail,
            local: false,
        }
    }
}

impl From<&str> for Failure {
    fn from(detail: &str) -> Self {
        detail.to_owned().into()
    }
}

pub(super) fn io_failure(e: io::Error) -> Failure {
    Failure {
        detail: io_detail(&e),
        local: is_local(&e),
    }
}

/// Errors that come from this host running short of something (descriptors,
/// memory, socket buffers, local ports, processes) rather than from the
/// backend: a backend cannot make our socket() or fork() fail.
pub(super) fn is_local(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::EMFILE
                | libc::ENFILE
                | libc::ENOBUFS
                | libc::ENOMEM
                | libc::EADDRNOTAVAIL
                | libc::EADDRINUSE
                | libc::EAGAIN
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shortages_of_this_host_are_local_and_the_backends_answers_are_not() {
        for errno in [
            libc::EMFILE,
            libc::ENFILE,
            libc::ENOBUFS,
            libc::ENOMEM,
            libc::EADDRNOTAVAIL,
            libc::EADDRINUSE,
            libc::EAGAIN,
        ] {
            let f = io_failure(io::Error::from_raw_os_error(errno));
            assert!(f.local, "errno {errno}: {f:?}");
        }
        for errno in [
            libc::ECONNREFUSED,
            libc::ECONNRESET,
            libc::EHOSTUNREACH,
            libc::ENETUNREACH,
            libc::ETIMEDOUT,
            libc::EPIPE,
        ] {
            let f = io_failure(io::Error::from_raw_os_error(errno));
            assert!(!f.local, "errno {errno}: {f:?}");
        }
        let f = io_failure(io::Error::from_raw_os_error(libc::EMFILE));
        assert_eq!(f.detail, "Too many open files (os error 24)");
        assert!(!Failure::from("HTTP 503 (want 200)").local);
    }
}
