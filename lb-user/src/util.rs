//! Small helpers shared by the daemon, the CLI and the tests.

use std::time::{Duration, Instant};

/// Lets a recurring message through at most once per `period`: a flood of
/// the same event must not flood the log.
#[derive(Debug)]
pub struct Every {
    period: Duration,
    last: Option<Instant>,
}

impl Every {
    pub const fn new(period: Duration) -> Self {
        Self { period, last: None }
    }

    /// Whether the message may go out now (then the next waits a period).
    pub fn due(&mut self) -> bool {
        if self.last.is_some_and(|t| t.elapsed() < self.period) {
            return false;
        }
        self.last = Some(Instant::now());
        true
    }
}

/// CLOCK_MONOTONIC in ns: the clock of the XDP program's affinity timestamps
/// (`bpf_ktime_get_coarse_ns()`, the same clock at tick resolution), so ages
/// and idle times can be computed from them.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid out-pointer; CLOCK_MONOTONIC always exists.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    debug_assert_eq!(rc, 0);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_lets_one_through_per_period() {
        let mut e = Every::new(Duration::from_secs(3600));
        assert!(e.due(), "the first");
        assert!(!e.due(), "not again within the period");
        let mut now = Every::new(Duration::ZERO);
        assert!(now.due() && now.due(), "a zero period lets all through");
    }
}
