//! How the daemon and the CLI write MACs and durations.

use std::time::Duration;

pub fn fmt_mac(mac: &[u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

pub fn fmt_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}
