//! `[announce]`: the routing table in which the daemon installs a /32 route
//! per VIP it can serve, for the node's BGP daemon to export (see
//! docs/scale-out.md). Absent: nothing is announced.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Problems, raw};
use crate::fmt::fmt_duration;

/// The route protocol number stickylb marks its routes with unless
/// `protocol` says otherwise (free in /etc/iproute2/rt_protos).
pub const DEFAULT_ROUTE_PROTOCOL: u32 = 250;
/// How long `unload` and a `--fresh` start wait after withdrawing.
pub const DEFAULT_WITHDRAW_DELAY: Duration = Duration::from_secs(2);
/// Longer than any BGP daemon needs to send a withdrawal on: beyond this an
/// `unload` would only look hung.
pub const MAX_WITHDRAW_DELAY: Duration = Duration::from_secs(60);
/// The kernel's own protocol numbers (unspec, redirect, kernel, boot,
/// static): routes marked with them are the kernel's or an administrator's.
const MAX_RESERVED_PROTOCOL: u32 = 4;

/// The resolved `[announce]` section.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AnnounceConfig {
    /// The kernel routing table the VIP routes go in, learnt by the BGP
    /// daemon; no `ip rule` points at it, so it routes nothing here.
    pub table: u32,
    /// The route protocol number that marks stickylb's routes in `table`
    /// (5-255 once validated; see `protocol_number`).
    pub protocol: u32,
    /// Between withdrawing and no longer serving (`unload`, `--fresh`).
    #[serde(serialize_with = "raw::ser_duration")]
    pub withdraw_delay: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAnnounce {
    table: u32,
    #[serde(default = "default_protocol")]
    protocol: u32,
    #[serde(
        default = "default_withdraw_delay",
        deserialize_with = "raw::de_duration"
    )]
    withdraw_delay: Duration,
}

fn default_protocol() -> u32 {
    DEFAULT_ROUTE_PROTOCOL
}
fn default_withdraw_delay() -> Duration {
    DEFAULT_WITHDRAW_DELAY
}

impl RawAnnounce {
    pub(super) fn resolve(self) -> AnnounceConfig {
        AnnounceConfig {
            table: self.table,
            protocol: self.protocol,
            withdraw_delay: self.withdraw_delay,
        }
    }
}

impl AnnounceConfig {
    /// The protocol number as routes carry it (valid once validated).
    pub fn protocol_number(&self) -> u8 {
        u8::try_from(self.protocol).unwrap_or(0)
    }

    pub(super) fn validate(&self, out: &mut Problems) {
        if let Some(why) = table_problem(self.table) {
            out.push("announce table", why);
        }
        if !(MAX_RESERVED_PROTOCOL + 1..=255).contains(&self.protocol) {
            out.push(
                "announce protocol",
                format!(
                    "{} is not usable: a route protocol number is 0-255, and 0-4 are the \
                     kernel's own (unspec, redirect, kernel, boot, static), which mark \
                     routes that are not stickylb's; pick a free one such as \
                     {DEFAULT_ROUTE_PROTOCOL} (the default)",
                    self.protocol
                ),
            );
        }
        if self.withdraw_delay > MAX_WITHDRAW_DELAY {
            out.push(
                "announce withdraw_delay",
                format!(
                    "{} is too long: at most {} (a BGP daemon sends a withdrawal within \
                     a second; the default is {})",
                    fmt_duration(self.withdraw_delay),
                    fmt_duration(MAX_WITHDRAW_DELAY),
                    fmt_duration(DEFAULT_WITHDRAW_DELAY)
                ),
            );
        }
    }
}

fn table_problem(table: u32) -> Option<String> {
    let name = match table {
        0 => "unspec: no table",
        253 => "default",
        254 => "main",
        255 => "local",
        _ => return None,
    };
    Some(format!(
        "{table} is the kernel's {name} table, which routes this host's own traffic: give \
         stickylb a table of its own (e.g. 200) that only the BGP daemon reads"
    ))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::testutil::*;

    fn with(section: &str) -> String {
        format!("{}\n[announce]\n{section}\n", MINIMAL)
    }

    #[test]
    fn absent_means_no_announcing() {
        assert_eq!(parse(MINIMAL).announce, None);
    }

    #[test]
    fn defaults_and_explicit_values() {
        let a = parse(&with("table = 200")).announce.unwrap();
        assert_eq!((a.table, a.protocol), (200, 250));
        assert_eq!(a.withdraw_delay, Duration::from_secs(2));
        let a = parse(&with(
            "table = 1000\nprotocol = 5\nwithdraw_delay = \"500ms\"",
        ))
        .announce
        .unwrap();
        assert_eq!((a.table, a.protocol), (1000, 5));
        assert_eq!(a.withdraw_delay, Duration::from_millis(500));
        let a = parse(&with("table = 1\nprotocol = 255\nwithdraw_delay = \"0s\""))
            .announce
            .unwrap();
        assert_eq!(
            (a.table, a.protocol, a.withdraw_delay),
            (1, 255, Duration::ZERO)
        );
    }

    #[test]
    fn the_kernels_tables_are_refused_by_name() {
        for (t, name) in [
            (0, "unspec"),
            (253, "default"),
            (254, "main"),
            (255, "local"),
        ] {
            let p = problems(&with(&format!("table = {t}")));
            assert_eq!(p.len(), 1, "{p:?}");
            assert!(
                p[0].starts_with(&format!("announce table: {t} is the kernel's {name}")),
                "{p:?}"
            );
        }
        for t in [1, 252, 256, u32::MAX] {
            parse(&with(&format!("table = {t}")));
        }
    }

    #[test]
    fn reserved_and_out_of_range_protocols_are_refused_saying_why() {
        for p in [0, 1, 2, 3, 4, 256, 1000] {
            let got = problems(&with(&format!("table = 200\nprotocol = {p}")));
            assert_eq!(got.len(), 1, "{got:?}");
            assert!(
                got[0].starts_with(&format!("announce protocol: {p} is not usable"))
                    && got[0].contains("the kernel's own"),
                "{got:?}"
            );
        }
    }

    #[test]
    fn withdraw_delay_is_bounded_and_every_problem_is_reported() {
        parse(&with("table = 200\nwithdraw_delay = \"60s\""));
        let p = problems(&with("table = 254\nprotocol = 2\nwithdraw_delay = \"61s\""));
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(
            p[2].starts_with("announce withdraw_delay: 1m 1s is too long"),
            "{p:?}"
        );
    }

    #[test]
    fn table_is_required_and_unknown_fields_are_named() {
        let e = syntax_error(&with("protocol = 250"));
        assert!(e.contains("table"), "{e}");
        let e = syntax_error(&with("table = 200\ntabel = 3"));
        assert!(e.contains("tabel"), "{e}");
    }

    /// The example file's commented section, uncommented, is valid and
    /// shows the defaults.
    #[test]
    fn the_examples_commented_section_is_the_defaults() {
        let example = include_str!("../../../docs/stickylb.example.toml");
        let section: Vec<&str> = example
            .lines()
            .skip_while(|l| *l != "# [announce]")
            .skip(1)
            .take_while(|l| l.starts_with("# "))
            .map(|l| &l[2..])
            .collect();
        assert_eq!(section.len(), 3, "{section:?}");
        let a = parse(&with(&section.join("\n"))).announce.unwrap();
        assert_eq!(a.protocol, super::DEFAULT_ROUTE_PROTOCOL);
        assert_eq!(a.withdraw_delay, super::DEFAULT_WITHDRAW_DELAY);
        assert_eq!(a.table, 200);
    }

    #[test]
    fn serializes_back() {
        let c = parse(&with("table = 200"));
        let text = toml::to_string(&c).unwrap();
        assert_eq!(parse(&text), c);
    }
}
