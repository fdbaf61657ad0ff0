//! The UDP and exec checks' fields: parsed, cascaded, validated, and the
//! warning for UDP VIPs whose service is never checked.

use crate::config::{CheckKind, testutil::*};

#[test]
fn udp_and_exec_fields_cascade() {
    let c = parse(&doc(
        "[health]\nkind = \"udp\"\npayload = \"ping\\n\"\nexpect = \"pong\"",
        "protocol = \"udp\"",
        "[vip.backend.health]\nkind = \"exec\"\ncommand = [\"/usr/bin/check\", \"-q\"]",
    ));
    assert_eq!(c.health.kind, CheckKind::Udp);
    assert_eq!(c.vips[0].health.payload, "ping\n");
    assert_eq!(c.vips[0].health.expect.as_deref(), Some("pong"));
    let h = &backend(&c).health;
    assert_eq!(h.kind, CheckKind::Exec);
    assert_eq!(h.command, ["/usr/bin/check", "-q"]);
    // The UDP fields are inherited, unused, as `path` is by a TCP check.
    assert_eq!(h.payload, "ping\n");

    let text = toml::to_string(&c).unwrap();
    assert_eq!(parse(&text), c, "re-parsed from:\n{text}");
}

#[test]
fn exec_needs_a_command_given_by_absolute_path() {
    assert_only_problem(
        &doc("[health]\nkind = \"exec\"", "", ""),
        "health.command",
        "is empty: kind = \"exec\" runs a command",
    );
    assert_only_problem(
        &doc(
            "",
            "",
            "[vip.backend.health]\nkind = \"exec\"\ncommand = [\"check.sh\"]",
        ),
        "vip \"web\" backend 10.0.0.11:80 health.command",
        "\"check.sh\" is not an absolute path",
    );
    assert_only_problem(
        &doc(
            "[health]\ncommand = [\"/bin/check\", \"a\\u0000b\"]",
            "",
            "",
        ),
        "health.command",
        "NUL",
    );
    // An empty command is no problem for a backend that does not run it.
    parse(&doc("[health]\nkind = \"udp\"", "", ""));
}

#[test]
fn udp_payload_fits_a_datagram() {
    let big = "x".repeat(65_508);
    assert_only_problem(
        &doc(&format!("[health]\npayload = \"{big}\""), "", ""),
        "health.payload",
        "is 65508 bytes: a UDP datagram holds at most 65507",
    );
}

#[test]
fn unknown_kind_lists_the_kinds() {
    let msg = syntax_error(&doc("[health]\nkind = \"icmp\"", "", ""));
    for k in ["`tcp`", "`http`", "`udp`", "`exec`"] {
        assert!(msg.contains(k), "{msg}");
    }
}

#[test]
fn udp_vip_checked_by_tcp_only_is_warned_about() {
    let warnings = |text: &str| -> Vec<String> {
        parse(text)
            .health_warnings()
            .iter()
            .map(ToString::to_string)
            .collect()
    };
    let w = warnings(&doc("", "protocol = \"udp\"", ""));
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].starts_with(
            "vip \"web\" health.kind: a UDP VIP, but 1 of its 1 backends are checked by tcp only"
        ) && w[0].contains("kind = \"udp\""),
        "{w:?}"
    );
    assert!(
        warnings(&doc(
            "",
            "protocol = \"udp\"\n[vip.health]\nkind = \"udp\"",
            ""
        ))
        .is_empty()
    );
    assert!(
        warnings(&doc(
            "",
            "protocol = \"udp\"",
            "[vip.backend.health]\nkind = \"exec\"\ncommand = [\"/bin/true\"]"
        ))
        .is_empty()
    );
    // TCP VIPs are checked by what serves them.
    assert!(warnings(MINIMAL).is_empty());
    assert!(warnings(&doc("[health]\nkind = \"http\"", "", "")).is_empty());
}

#[test]
fn the_example_checks_its_udp_vip_by_udp() {
    let c = parse(include_str!("../../../../docs/stickylb.example.toml"));
    let dns = c.vip("dns").unwrap();
    assert_eq!(dns.health.kind, CheckKind::Udp);
    assert_eq!(dns.health.payload.len(), 17);
    assert_eq!(dns.health.expect.as_deref(), Some("\u{12}\u{34}"));
    assert!(c.health_warnings().is_empty(), "{:?}", c.health_warnings());
}
