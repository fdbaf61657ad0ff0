//! Small helpers shared by the daemon, the CLI and the tests.

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
