//! The rules a configuration must meet, checked without touching the
//! machine, every problem reported at once.

use std::{collections::HashMap, net::Ipv4Addr, path::Path, time::Duration};

use lb_common::{
    AFFINITY_REFRESH_NS, DEFAULT_AFFINITY_CAPACITY, DEFAULT_TABLE_SIZE, MAX_BACKENDS, MAX_VIPS,
    RING_POOL_SIZE,
    maglev::{is_prime, next_prime},
};

use super::{
    BackendConfig, CheckKind, Config, DEFAULT_CONTROL_SOCKET, DEFAULT_PIN_PATH, Forwarding,
    HealthConfig, MAX_WEIGHT, Problem, Problems, Protocol, VipConfig,
};
use crate::fmt::{fmt_duration, fmt_mac};

#[cfg(test)]
mod duration_tests;
#[cfg(test)]
mod probe_tests;
#[cfg(test)]
mod tests;

/// The kernel keeps interface names in IFNAMSIZ (16) bytes, NUL included.
pub(super) const MAX_INTERFACE_LEN: usize = 15;
/// sun_path holds 108 bytes, NUL included; a longer socket path cannot be bound.
const MAX_SOCKET_PATH_LEN: usize = 107;
const MIN_TABLE_SIZE: u32 = 7;
const MIN_AFFINITY_CAPACITY: u32 = 1024;
const MIN_HEALTH_INTERVAL: Duration = Duration::from_millis(10);

impl Config {
    /// Every problem with this configuration; empty when it is usable.
    /// Touches nothing outside `self` (see `check_environment` for that).
    pub fn validate(&self) -> Vec<Problem> {
        let mut out = Problems::default();
        self.validate_globals(&mut out);
        if let Some(a) = &self.announce {
            a.validate(&mut out);
        }
        self.tunnel.validate(&mut out);
        self.validate_vip_set(&mut out);
        self.validate_sync(&mut out);
        let global_health = health_problems(&self.health);
        for (path, message) in &global_health {
            out.push(*path, message.clone());
        }
        let mut seen_names: HashMap<&str, usize> = HashMap::new();
        let mut seen_keys: HashMap<(Ipv4Addr, u16, Protocol), usize> = HashMap::new();
        for (i, vip) in self.vips.iter().enumerate() {
            let label = vip_label(i, &vip.name);
            if let Some(&first) = seen_names.get(vip.name.as_str()) {
                out.push(&label, format!("duplicate name (also vip #{})", first + 1));
            } else {
                seen_names.insert(&vip.name, i);
            }
            let key = (vip.address, vip.port, vip.protocol);
            if let Some(&first) = seen_keys.get(&key) {
                out.push(
                    &label,
                    format!(
                        "{}:{}/{} is also served by {}; each (address, port, protocol) \
                         belongs to one VIP only",
                        vip.address,
                        vip.port,
                        vip.protocol,
                        vip_label(first, &self.vips[first].name)
                    ),
                );
            } else {
                seen_keys.insert(key, i);
            }
            validate_vip(vip, &label, &global_health, &mut out);
        }
        out.0
    }

    /// What is allowed but almost certainly not meant: `check` prints these,
    /// `run` and a reload log them. Touches nothing outside `self`.
    pub fn warnings(&self) -> Vec<Problem> {
        let mut out = Problems::default();
        self.warn_unweighted_vips(&mut out);
        self.warn_unused_source_prefix(&mut out);
        let mut out = out.0;
        out.extend(self.health_warnings());
        out
    }

    /// A VIP whose backends all have weight 0 has an empty Maglev table: a
    /// new client has nowhere to go and its frames are dropped.
    fn warn_unweighted_vips(&self, out: &mut Problems) {
        for (i, vip) in self.vips.iter().enumerate() {
            if !vip.backends.is_empty() && vip.backends.iter().all(|b| b.weight == 0) {
                out.push(
                    vip_label(i, &vip.name),
                    "every backend has weight 0, so the VIP takes no new client (their \
                     frames are dropped; only clients already pinned are served): give at \
                     least one backend a weight above 0",
                );
            }
        }
    }

    fn validate_globals(&self, out: &mut Problems) {
        let iface = &self.interface;
        if iface.is_empty() {
            out.push(
                "interface",
                "is empty: name the NIC to attach XDP to, e.g. \"eth0\"",
            );
        } else if iface.len() > MAX_INTERFACE_LEN {
            out.push(
                "interface",
                format!(
                    "{iface:?} is {} bytes long; Linux interface names are at most \
                     {MAX_INTERFACE_LEN}",
                    iface.len()
                ),
            );
        } else if !is_valid_interface_name(iface) {
            out.push(
                "interface",
                format!(
                    "{iface:?} cannot be an interface name: no '/', ':' or whitespace, \
                     and not \".\" or \"..\""
                ),
            );
        }
        if !self.pin_path.is_absolute() {
            out.push(
                "pin_path",
                format!(
                    "{:?} is relative; use an absolute path on bpffs, e.g. {DEFAULT_PIN_PATH:?}",
                    self.pin_path
                ),
            );
        }
        // stickylb unpins only its own names, but its folder must still be
        // its own: the bpffs root (or /) is shared with every other program.
        if [Path::new("/"), Path::new("/sys/fs/bpf")]
            .iter()
            .any(|root| self.pin_path.components().eq(root.components()))
        {
            out.push(
                "pin_path",
                format!(
                    "{} is shared with other software; give stickylb a folder of its own, \
                     e.g. {DEFAULT_PIN_PATH:?}",
                    self.pin_path.display()
                ),
            );
        }
        if !self.control_socket.is_absolute() {
            out.push(
                "control_socket",
                format!(
                    "{:?} is relative; use an absolute path, e.g. {DEFAULT_CONTROL_SOCKET:?}",
                    self.control_socket
                ),
            );
        }
        let socket_len = self.control_socket.as_os_str().len();
        if socket_len > MAX_SOCKET_PATH_LEN {
            out.push(
                "control_socket",
                format!(
                    "path is {socket_len} bytes long; a Unix socket path is at most \
                     {MAX_SOCKET_PATH_LEN}"
                ),
            );
        }
        if self.affinity_capacity < MIN_AFFINITY_CAPACITY {
            out.push(
                "affinity_capacity",
                format!(
                    "{} is too small: must be at least {MIN_AFFINITY_CAPACITY} \
                     (default {DEFAULT_AFFINITY_CAPACITY})",
                    self.affinity_capacity
                ),
            );
        }
    }

    /// Limits that apply to all VIPs together: the data path's maps are sized
    /// once, at load time.
    fn validate_vip_set(&self, out: &mut Problems) {
        if self.vips.is_empty() {
            out.push(
                "vip",
                "no VIPs: add at least one [[vip]] table with its [[vip.backend]]s",
            );
        }
        if self.vips.len() > MAX_VIPS as usize {
            out.push(
                "vip",
                format!(
                    "{} VIPs, more than the {MAX_VIPS} the data path holds",
                    self.vips.len()
                ),
            );
        }
        let backends: usize = self.vips.iter().map(|v| v.backends.len()).sum();
        if backends > MAX_BACKENDS as usize {
            out.push(
                "vip",
                format!(
                    "{backends} backends over all VIPs, more than the {MAX_BACKENDS} the \
                     data path holds"
                ),
            );
        }
        let tables: u64 = self.vips.iter().map(|v| u64::from(v.table_size)).sum();
        let largest = self.vips.iter().map(|v| v.table_size).max().unwrap_or(0);
        let needed = tables + u64::from(largest);
        if needed > u64::from(RING_POOL_SIZE) {
            out.push(
                "vip",
                format!(
                    "the Maglev tables need {needed} ring slots ({tables} for the VIPs' \
                     tables plus {largest} to build a replacement for the largest beside \
                     it), more than the pool's {RING_POOL_SIZE}; use smaller table_size \
                     values or fewer VIPs"
                ),
            );
        }
    }
}

/// Empty names cannot be quoted usefully, so they are named by position
/// (1-based, as a person counts them in the file).
pub(super) fn vip_label(index: usize, name: &str) -> String {
    if name.is_empty() {
        format!("vip #{}", index + 1)
    } else {
        format!("vip {name:?}")
    }
}

fn is_valid_vip_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// The kernel's own rule (dev_valid_name), so a name we accept is one it could have.
pub(super) fn is_valid_interface_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace())
}

fn is_unicast(a: Ipv4Addr) -> bool {
    !(a.is_unspecified() || a.is_multicast() || a.is_broadcast())
}

fn validate_vip(
    vip: &VipConfig,
    label: &str,
    global_health: &[(&'static str, String)],
    out: &mut Problems,
) {
    if vip.name.is_empty() {
        out.push(
            format!("{label} name"),
            "is empty: give every VIP a name of letters, digits, '_', '.' and '-'",
        );
    } else if !is_valid_vip_name(&vip.name) {
        out.push(
            format!("{label} name"),
            format!(
                "{:?} has characters other than letters, digits, '_', '.' and '-'",
                vip.name
            ),
        );
    }
    if !is_unicast(vip.address) {
        out.push(
            format!("{label} address"),
            format!(
                "{} is not a unicast address; a VIP is an address clients connect to",
                vip.address
            ),
        );
    }
    if vip.port == 0 {
        out.push(format!("{label} port"), "is 0: use a port from 1 to 65535");
    }
    if vip.table_size < MIN_TABLE_SIZE {
        out.push(
            format!("{label} table_size"),
            format!(
                "{} is too small: must be a prime of at least {MIN_TABLE_SIZE} \
                 (default {DEFAULT_TABLE_SIZE})",
                vip.table_size
            ),
        );
    } else if !is_prime(vip.table_size) {
        out.push(
            format!("{label} table_size"),
            format!(
                "{} is not prime; Maglev needs a prime table size (next prime: {})",
                vip.table_size,
                next_prime(vip.table_size)
            ),
        );
    }
    if vip.backends.len() > vip.table_size as usize {
        out.push(
            format!("{label} table_size"),
            format!(
                "{} slots for {} backends: some backends would get none; use a prime \
                 of at least 100 × the number of backends for even shares",
                vip.table_size,
                vip.backends.len()
            ),
        );
    }
    let min_timeout = Duration::from_nanos(2 * AFFINITY_REFRESH_NS);
    if vip.affinity_timeout < min_timeout {
        out.push(
            format!("{label} affinity_timeout"),
            format!(
                "{} is too short: must be at least {}, because the data path refreshes \
                 an entry's last-seen time only once every {} and a busy client would \
                 otherwise lose its backend",
                fmt_duration(vip.affinity_timeout),
                fmt_duration(min_timeout),
                fmt_duration(Duration::from_nanos(AFFINITY_REFRESH_NS)),
            ),
        );
    } else if let Some(message) = too_long(vip.affinity_timeout, min_timeout, MAX_AFFINITY_TIMEOUT)
    {
        out.push(format!("{label} affinity_timeout"), message);
    }
    if vip.backends.is_empty() {
        out.push(label, "no backends: add at least one [[vip.backend]] table");
    }

    // A problem the VIP merely inherited was already reported for [health].
    let vip_health: Vec<_> = health_problems(&vip.health);
    for (field, message) in &vip_health {
        if !global_health
            .iter()
            .any(|(f, m)| f == field && m == message)
        {
            out.push(format!("{label} {field}"), message.clone());
        }
    }

    let mut seen: HashMap<(Ipv4Addr, u16), usize> = HashMap::new();
    for (i, b) in vip.backends.iter().enumerate() {
        let blabel = format!("{label} backend {}:{}", b.address, b.port);
        if let Some(&first) = seen.get(&b.key()) {
            out.push(
                &blabel,
                format!("duplicate backend (also backend #{})", first + 1),
            );
        } else {
            seen.insert(b.key(), i);
        }
        validate_backend(b, vip, &blabel, &vip_health, out);
    }
}

/// What `stickylb check` would report about `b` as a backend of `vip`: the
/// same rules for a backend added at run time as for one in the file.
pub fn backend_problems(b: &BackendConfig, vip: &VipConfig) -> Vec<Problem> {
    let mut out = Problems::default();
    let label = format!("backend {}:{}", b.address, b.port);
    validate_backend(b, vip, &label, &health_problems(&vip.health), &mut out);
    out.0
}

fn validate_backend(
    b: &BackendConfig,
    vip: &VipConfig,
    label: &str,
    vip_health: &[(&'static str, String)],
    out: &mut Problems,
) {
    if b.address == vip.address {
        out.push(
            format!("{label} address"),
            "is the VIP's own address; a backend must be reached at its own address \
             (with DSR it holds the VIP on loopback)",
        );
    } else if !is_unicast(b.address) {
        out.push(
            format!("{label} address"),
            format!("{} is not a unicast address", b.address),
        );
    } else if b.address.is_loopback() {
        out.push(
            format!("{label} address"),
            format!(
                "{} is a loopback address: frames sent to it never reach a backend (this \
                 host drops them); give the backend's own address{}",
                b.address,
                // A tunnel VIP's backends may be in any routed subnet.
                if vip.forwarding == Forwarding::Dsr {
                    " on the interface's network"
                } else {
                    ""
                }
            ),
        );
    }
    if b.port == 0 {
        out.push(format!("{label} port"), "is 0: use a port from 1 to 65535");
    }
    if b.weight > MAX_WEIGHT {
        out.push(
            format!("{label} weight"),
            format!(
                "{} is too large: must be 0 to {MAX_WEIGHT} (0 drains the backend)",
                b.weight
            ),
        );
    }
    if let Some(mac) = &b.mac
        && vip.forwarding != Forwarding::Dsr
    {
        out.push(
            format!("{label} mac"),
            format!(
                "{} is set, but the VIP forwards by {}: frames are routed to the backend's \
                 address and the next hop's MAC comes from the kernel's FIB for every \
                 frame, so a backend MAC is never used; leave mac out",
                fmt_mac(mac),
                vip.forwarding
            ),
        );
    } else if let Some(mac) = &b.mac {
        if mac[0] & 1 != 0 {
            out.push(
                format!("{label} mac"),
                format!(
                    "{} is a multicast/broadcast address; give the backend's unicast MAC, \
                     or leave mac out to resolve it from the neighbour table",
                    fmt_mac(mac)
                ),
            );
        } else if *mac == [0; 6] {
            out.push(
                format!("{label} mac"),
                "00:00:00:00:00:00 is not a MAC address; give the backend's MAC, or leave \
                 mac out to resolve it from the neighbour table",
            );
        }
    }
    for (field, message) in health_problems(&b.health) {
        if !vip_health.iter().any(|(f, m)| *f == field && *m == message) {
            out.push(format!("{label} {field}"), message);
        }
    }
}

/// Messages carry the offending values, so that the same inherited problem
/// compares equal at every level and is reported once, where it was set.
fn health_problems(h: &HealthConfig) -> Vec<(&'static str, String)> {
    let mut out = health_duration_bounds(h);
    if h.interval < MIN_HEALTH_INTERVAL {
        out.push((
            "health.interval",
            format!(
                "{} is too short: must be at least {}",
                fmt_duration(h.interval),
                fmt_duration(MIN_HEALTH_INTERVAL)
            ),
        ));
    }
    if h.timeout.is_zero() {
        out.push((
            "health.timeout",
            "is 0: must be more than 0 and at most the interval".to_owned(),
        ));
    } else if h.timeout > h.interval {
        out.push((
            "health.timeout",
            format!(
                "{} is longer than the interval {}: must be at most the interval, so \
                 checks do not overlap",
                fmt_duration(h.timeout),
                fmt_duration(h.interval)
            ),
        ));
    }
    if h.rise == 0 {
        out.push((
            "health.rise",
            "is 0: must be at least 1 (successes before a backend counts as alive)".to_owned(),
        ));
    }
    if h.fall == 0 {
        out.push((
            "health.fall",
            "is 0: must be at least 1 (failures before a backend counts as dead)".to_owned(),
        ));
    }
    if h.port == Some(0) {
        out.push((
            "health.port",
            "is 0: use a port from 1 to 65535, or leave it out to check the backend's port"
                .to_owned(),
        ));
    }
    // Checked whatever the kind: a level that checks by TCP still passes its
    // path down to VIPs or backends that switch to HTTP, and the problem
    // belongs where the value was written.
    if !h.path.starts_with('/') {
        out.push((
            "health.path",
            format!("{:?} must start with '/', e.g. \"/healthz\"", h.path),
        ));
    } else if !h.path.bytes().all(|b| b.is_ascii_graphic()) {
        // It is sent as written in the request line: a space or a line
        // break would break the request (or add headers to it).
        out.push((
            "health.path",
            format!(
                "{:?} has spaces, control or non-ASCII characters: percent-encode them \
                 (e.g. %20 for a space)",
                h.path
            ),
        ));
    }
    if !(100..=599).contains(&h.expect_status) {
        out.push((
            "health.expect_status",
            format!(
                "{} is not an HTTP status: must be 100 to 599",
                h.expect_status
            ),
        ));
    }
    out.extend(probe_problems(h));
    out
}

/// A UDP datagram over IPv4 carries at most this much.
const MAX_UDP_PAYLOAD: usize = 65_507;

/// The fields of the UDP and exec checks. Like `path`, they are checked
/// whatever the kind, where they were written; only a missing command is a
/// problem of the kind that needs it.
fn probe_problems(h: &HealthConfig) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if h.payload.len() > MAX_UDP_PAYLOAD {
        out.push((
            "health.payload",
            format!(
                "is {} bytes: a UDP datagram holds at most {MAX_UDP_PAYLOAD}",
                h.payload.len()
            ),
        ));
    }
    match h.command.first() {
        None if h.kind == CheckKind::Exec => out.push((
            "health.command",
            "is empty: kind = \"exec\" runs a command, e.g. \
             command = [\"/usr/local/bin/check-backend\", \"--quiet\"]"
                .to_owned(),
        )),
        None => {}
        Some(program) if !program.starts_with('/') => out.push((
            "health.command",
            format!(
                "{program:?} is not an absolute path: give the program's full path (no \
                 shell or PATH search is used; for shell syntax run [\"/bin/sh\", \"-c\", \
                 \"...\"])"
            ),
        )),
        Some(_) => {}
    }
    if h.command.iter().any(|a| a.contains('\0')) {
        out.push((
            "health.command",
            "has a NUL character, which no program argument can hold".to_owned(),
        ));
    }
    out
}

/// The longest health interval: a backend checked less often than this is
/// not watched. Also what keeps every instant a checker computes (start +
/// interval) representable.
const MAX_HEALTH_INTERVAL: Duration = Duration::from_secs(3600);
/// The longest health timeout: a fresh VIP waits up to its backends'
/// timeout for their first results before it serves.
const MAX_HEALTH_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest affinity timeout, one year: far beyond any session, and far
/// below what the data path's 64-bit nanoseconds hold.
const MAX_AFFINITY_TIMEOUT: Duration = Duration::from_secs(31_557_600);

/// Upper bounds of the health durations (their lower bounds come with the
/// other rules of `health_problems`). Every duration of the file has one,
/// so no value can overflow the arithmetic that uses it.
fn health_duration_bounds(h: &HealthConfig) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if let Some(m) = too_long(h.interval, MIN_HEALTH_INTERVAL, MAX_HEALTH_INTERVAL) {
        out.push(("health.interval", m));
    }
    if let Some(m) = too_long(h.timeout, Duration::from_millis(1), MAX_HEALTH_TIMEOUT) {
        out.push(("health.timeout", format!("{m} and at most the interval")));
    }
    out
}

impl Config {
    /// What is allowed but probably wrong about the health checks: a UDP
    /// VIP whose backends are checked by TCP or HTTP only, so a dead UDP
    /// service is never noticed. `stickylb check`, `run` and `reload` log them.
    pub fn health_warnings(&self) -> Vec<Problem> {
        let mut out = Problems::default();
        for (i, vip) in self.vips.iter().enumerate() {
            if vip.protocol != Protocol::Udp {
                continue;
            }
            let stream_checked: Vec<_> = vip
                .backends
                .iter()
                .filter(|b| matches!(b.health.kind, CheckKind::Tcp | CheckKind::Http))
                .collect();
            let Some(first) = stream_checked.first() else {
                continue;
            };
            let kind = first.health.kind;
            out.push(
                format!("{} health.kind", vip_label(i, &vip.name)),
                format!(
                    "a UDP VIP, but {} of its {} backends are checked by {kind} only: a \
                     backend whose UDP service dies stays up and its clients get no answer; \
                     check the service itself with kind = \"udp\" (and payload = \"...\", \
                     expect = \"...\") or kind = \"exec\" in [vip.health]",
                    stream_checked.len(),
                    vip.backends.len()
                ),
            );
        }
        out.0
    }
}

/// The message for `d` above `max`, naming the allowed range.
fn too_long(d: Duration, min: Duration, max: Duration) -> Option<String> {
    (d > max).then(|| {
        format!(
            "{} is too long: must be from {} to {}",
            fmt_duration(d),
            fmt_duration(min),
            fmt_duration(max)
        )
    })
}
