//! How values are shown to people — in problems, log lines, replies and the
//! printed configuration. One definition of each, so the same value reads the
//! same wherever it appears.

use std::time::Duration;

/// "02:00:00:00:00:01": lowercase hex pairs, the way `ip link` and
/// `ip neigh` print them and `config::parse_mac` reads them back.
pub fn fmt_mac(mac: &[u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

/// "500ms", "2s", "1s 500ms", "5m": the syntax the configuration file's
/// durations are written in, so a value shown in a problem, a health check's
/// outcome or a printed config can be pasted back into the file.
pub fn fmt_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// An age or idle time in milliseconds, short enough for a table cell:
/// "850ms", "1.5s", "2m05s". Not meant to be read back.
pub fn fmt_millis(ms: u64) -> String {
    if ms >= 60_000 {
        format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60)
    } else if ms >= 1000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_are_lowercase_hex_pairs() {
        assert_eq!(fmt_mac(&[0x02, 0xab, 0, 0, 0, 0x11]), "02:ab:00:00:00:11");
        assert_eq!(fmt_mac(&[0xff; 6]), "ff:ff:ff:ff:ff:ff");
        let mac = [0x02, 0, 0x5e, 0x10, 0xfe, 0x01];
        assert_eq!(crate::config::parse_mac(&fmt_mac(&mac)), Ok(mac));
    }

    #[test]
    fn durations_are_shown_in_configuration_units() {
        assert_eq!(fmt_duration(Duration::from_millis(500)), "500ms");
        assert_eq!(fmt_duration(Duration::from_secs(2)), "2s");
        assert_eq!(fmt_duration(Duration::from_millis(1500)), "1s 500ms");
        assert_eq!(fmt_duration(Duration::from_micros(250)), "250us");
        assert_eq!(fmt_duration(Duration::from_secs(300)), "5m");
        for d in [
            Duration::from_millis(1500),
            Duration::from_micros(250),
            Duration::from_secs(5400),
        ] {
            assert_eq!(humantime::parse_duration(&fmt_duration(d)), Ok(d));
        }
    }

    #[test]
    fn ages_are_short() {
        assert_eq!(fmt_millis(0), "0ms");
        assert_eq!(fmt_millis(999), "999ms");
        assert_eq!(fmt_millis(1500), "1.5s");
        assert_eq!(fmt_millis(59_999), "60.0s");
        assert_eq!(fmt_millis(60_000), "1m00s");
        assert_eq!(fmt_millis(125_000), "2m05s");
    }
}
