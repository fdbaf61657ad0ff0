//! One test per rule, each from inline TOML, and the promise that every
//! problem is reported at once.

use super::*;
use crate::config::{ConfigError, testutil::*};

#[test]
fn interface_must_be_set() {
    let text = MINIMAL.replace("\"eth0\"", "\"\"");
    assert_only_problem(&text, "interface", "is empty");
}

#[test]
fn interface_at_most_15_bytes() {
    let text = MINIMAL.replace("\"eth0\"", "\"a-very-long-nic0\"");
    assert_only_problem(
        &text,
        "interface",
        "is 16 bytes long; Linux interface names are at most 15",
    );
}

#[test]
fn interface_must_be_a_possible_name() {
    let text = MINIMAL.replace("\"eth0\"", "\"../eth0\"");
    assert_only_problem(&text, "interface", "cannot be an interface name");
}

#[test]
fn at_least_one_vip() {
    assert_only_problem(
        "interface = \"eth0\"",
        "vip",
        "no VIPs: add at least one [[vip]]",
    );
}

#[test]
fn vip_name_well_formed() {
    let text = MINIMAL.replace("\"web\"", "\"my web\"");
    assert_only_problem(
        &text,
        "vip \"my web\" name",
        "has characters other than letters, digits, '_', '.' and '-'",
    );
    let text = MINIMAL.replace("\"web\"", "\"\"");
    assert_only_problem(&text, "vip #1 name", "is empty");
}

#[test]
fn vip_names_unique() {
    let second = "\n[[vip]]\nname = \"web\"\naddress = \"192.0.2.11\"\nport = 80\n\
                  [[vip.backend]]\naddress = \"10.0.0.11\"\nport = 80\n";
    assert_only_problem(
        &format!("{MINIMAL}{second}"),
        "vip \"web\"",
        "duplicate name (also vip #1)",
    );
}

#[test]
fn vip_address_port_protocol_unique() {
    let second = "\n[[vip]]\nname = \"web2\"\naddress = \"192.0.2.10\"\nport = 80\n\
                  [[vip.backend]]\naddress = \"10.0.0.11\"\nport = 80\n";
    assert_only_problem(
        &format!("{MINIMAL}{second}"),
        "vip \"web2\"",
        "192.0.2.10:80/tcp is also served by vip \"web\"",
    );
    // Same address and port over another protocol is another service.
    let udp = second.replace("port = 80\n[[", "port = 80\nprotocol = \"udp\"\n[[");
    parse(&format!("{MINIMAL}{udp}"));
}

#[test]
fn vip_address_unicast() {
    let text = MINIMAL.replace("192.0.2.10", "224.0.0.1");
    assert_only_problem(
        &text,
        "vip \"web\" address",
        "224.0.0.1 is not a unicast address",
    );
}

#[test]
fn at_most_max_vips() {
    let mut c = parse(MINIMAL);
    let template = c.vips[0].clone();
    c.vips = (0..=MAX_VIPS)
        .map(|i| VipConfig {
            name: format!("v{i}"),
            port: 1000 + i as u16,
            table_size: 251,
            ..template.clone()
        })
        .collect();
    assert_validate_has(&c, "vip", "65 VIPs, more than the 64 the data path holds");
    c.vips.pop();
    assert_eq!(c.validate(), vec![]);
}

#[test]
fn table_size_prime() {
    assert_only_problem(
        &doc("", "table_size = 65536", ""),
        "vip \"web\" table_size",
        "65536 is not prime; Maglev needs a prime table size (next prime: 65537)",
    );
}

#[test]
fn table_size_at_least_7() {
    assert_only_problem(
        &doc("", "table_size = 5", ""),
        "vip \"web\" table_size",
        "5 is too small: must be a prime of at least 7",
    );
}

#[test]
fn table_size_not_below_backend_count() {
    let extra: String = (12..=20)
        .map(|i| format!("[[vip.backend]]\naddress = \"10.0.0.{i}\"\nport = 80\n"))
        .collect();
    assert_only_problem(
        &format!("{}{extra}", doc("", "table_size = 7", "")),
        "vip \"web\" table_size",
        "7 slots for 10 backends: some backends would get none",
    );
}

#[test]
fn tables_fit_in_the_ring_pool_with_room_for_a_rebuild() {
    let mut c = parse(MINIMAL);
    let template = c.vips[0].clone();
    // 16 tables of 2^17 - 1 fill the pool exactly, leaving no room to
    // build a replacement beside the largest.
    let big = 131_071;
    assert!(is_prime(big));
    c.vips = (0..16)
        .map(|i| VipConfig {
            name: format!("v{i}"),
            port: 1000 + i,
            table_size: big,
            ..template.clone()
        })
        .collect();
    assert_validate_has(
        &c,
        "vip",
        "the Maglev tables need 2228207 ring slots (2097136 for the VIPs' tables plus \
         131071 to build a replacement for the largest beside it), more than the \
         pool's 2097152",
    );
    c.vips.truncate(15);
    assert_eq!(c.validate(), vec![]);
}

#[test]
fn affinity_timeout_at_least_two_refresh_periods() {
    assert_only_problem(
        &doc("", "affinity_timeout = \"1500ms\"", ""),
        "vip \"web\" affinity_timeout",
        "1s 500ms is too short: must be at least 2s, because the data path refreshes \
         an entry's last-seen time only once every 1s",
    );
    parse(&doc("", "affinity_timeout = \"2s\"", ""));
}

#[test]
fn affinity_timeout_fits_in_nanoseconds() {
    assert_only_problem(
        &doc("", "affinity_timeout = \"600years\"", ""),
        "vip \"web\" affinity_timeout",
        "is too long",
    );
}

#[test]
fn every_vip_has_a_backend() {
    let text =
        "interface = \"eth0\"\n[[vip]]\nname = \"web\"\naddress = \"192.0.2.10\"\nport = 80\n";
    assert_only_problem(
        text,
        "vip \"web\"",
        "no backends: add at least one [[vip.backend]]",
    );
}

#[test]
fn backends_unique_within_a_vip() {
    let text = format!("{MINIMAL}[[vip.backend]]\naddress = \"10.0.0.11\"\nport = 80\n");
    let p = problems(&text);
    assert_eq!(
        p,
        vec!["vip \"web\" backend 10.0.0.11:80: duplicate backend (also backend #1)"]
    );
    // Another port on the same host is another backend.
    parse(&format!(
        "{MINIMAL}[[vip.backend]]\naddress = \"10.0.0.11\"\nport = 81\n"
    ));
}

#[test]
fn backend_is_not_the_vip() {
    let text = MINIMAL.replace("10.0.0.11", "192.0.2.10");
    assert_only_problem(
        &text,
        "vip \"web\" backend 192.0.2.10:80 address",
        "is the VIP's own address",
    );
}

#[test]
fn backend_address_unicast() {
    let text = MINIMAL.replace("10.0.0.11", "255.255.255.255");
    assert_only_problem(
        &text,
        "vip \"web\" backend 255.255.255.255:80 address",
        "is not a unicast address",
    );
}

#[test]
fn at_most_max_backends_in_total() {
    let mut c = parse(MINIMAL);
    let template = c.vips[0].clone();
    let per_vip = 1025;
    c.vips = (0..4u16)
        .map(|v| VipConfig {
            name: format!("v{v}"),
            port: 1000 + v,
            backends: (0..per_vip)
                .map(|i| BackendConfig {
                    port: 2000 + i,
                    ..template.backends[0].clone()
                })
                .collect(),
            ..template.clone()
        })
        .collect();
    assert_validate_has(&c, "vip", "4100 backends over all VIPs, more than the 4096");
}

#[test]
fn weight_at_most_65535() {
    assert_only_problem(
        &doc("", "", "weight = 65536"),
        "vip \"web\" backend 10.0.0.11:80 weight",
        "65536 is too large: must be 0 to 65535 (0 drains the backend)",
    );
    assert_eq!(backend(&parse(&doc("", "", "weight = 0"))).weight, 0);
}

#[test]
fn mac_unicast() {
    assert_only_problem(
        &doc("", "", "mac = \"ff:ff:ff:ff:ff:ff\""),
        "vip \"web\" backend 10.0.0.11:80 mac",
        "ff:ff:ff:ff:ff:ff is a multicast/broadcast address",
    );
    assert_only_problem(
        &doc("", "", "mac = \"00:00:00:00:00:00\""),
        "vip \"web\" backend 10.0.0.11:80 mac",
        "is not a MAC address",
    );
}

#[test]
fn ports_not_zero() {
    let text = MINIMAL.replace(
        "port = 80\n\n[[vip.backend]]",
        "port = 0\n\n[[vip.backend]]",
    );
    assert_only_problem(
        &text,
        "vip \"web\" port",
        "is 0: use a port from 1 to 65535",
    );
    let text = format!("{}0\n", MINIMAL.trim_end().trim_end_matches("80"));
    assert_only_problem(
        &text,
        "vip \"web\" backend 10.0.0.11:0 port",
        "is 0: use a port from 1 to 65535",
    );
    assert_only_problem(&doc("[health]\nport = 0", "", ""), "health.port", "is 0");
}

#[test]
fn health_interval_at_least_10ms() {
    assert_only_problem(
        &doc("[health]\ninterval = \"5ms\"\ntimeout = \"1ms\"", "", ""),
        "health.interval",
        "5ms is too short: must be at least 10ms",
    );
}

#[test]
fn health_timeout_positive() {
    assert_only_problem(
        &doc("[health]\ntimeout = \"0s\"", "", ""),
        "health.timeout",
        "is 0: must be more than 0 and at most the interval",
    );
}

#[test]
fn health_timeout_within_interval() {
    assert_only_problem(
        &doc("", "[vip.health]\ntimeout = \"2s\"", ""),
        "vip \"web\" health.timeout",
        "2s is longer than the interval 1s",
    );
}

#[test]
fn health_rise_and_fall_at_least_1() {
    assert_only_problem(
        &doc("", "", "[vip.backend.health]\nrise = 0"),
        "vip \"web\" backend 10.0.0.11:80 health.rise",
        "is 0: must be at least 1",
    );
    assert_only_problem(
        &doc("", "", "[vip.backend.health]\nfall = 0"),
        "vip \"web\" backend 10.0.0.11:80 health.fall",
        "is 0: must be at least 1",
    );
}

#[test]
fn http_path_starts_with_slash() {
    assert_only_problem(
        &doc("", "[vip.health]\nkind = \"http\"\npath = \"healthz\"", ""),
        "vip \"web\" health.path",
        "\"healthz\" must start with '/'",
    );
    // Also under a TCP check: a backend may inherit the path and turn
    // HTTP on, and the problem is reported once, where the path is set.
    let text = format!(
        "{}[[vip.backend]]\naddress = \"10.0.0.12\"\nport = 80\n\
         [vip.backend.health]\nkind = \"http\"\n",
        doc(
            "[health]\nkind = \"http\"\npath = \"healthz\"",
            "[vip.health]\nkind = \"tcp\"",
            "[vip.backend.health]\nkind = \"http\""
        )
    );
    assert_eq!(
        problems(&text),
        vec!["health.path: \"healthz\" must start with '/', e.g. \"/healthz\""]
    );
}

#[test]
fn http_path_is_sent_as_written_so_it_must_be_one_token() {
    for bad in ["/health check", "/a\\r\\nX: y", "/gr\u{fc}n"] {
        let text = doc(
            "",
            &format!("[vip.health]\nkind = \"http\"\npath = \"{bad}\""),
            "",
        );
        let p = problems(&text);
        assert_eq!(p.len(), 1, "{bad:?}: {p:?}");
        assert!(p[0].contains("percent-encode"), "{p:?}");
    }
    parse(&doc(
        "",
        "[vip.health]\nkind = \"http\"\npath = \"/a%20b?x=1&y=~\"",
        "",
    ));
}

#[test]
fn http_expect_status_is_a_status() {
    assert_only_problem(
        &doc("[health]\nkind = \"http\"\nexpect_status = 99", "", ""),
        "health.expect_status",
        "99 is not an HTTP status: must be 100 to 599",
    );
}

#[test]
fn inherited_health_problem_is_reported_once_where_it_is_set() {
    let text = format!(
        "{}[[vip.backend]]\naddress = \"10.0.0.12\"\nport = 80\n",
        doc("[health]\nrise = 0", "", "")
    );
    assert_eq!(
        problems(&text),
        vec!["health.rise: is 0: must be at least 1 (successes before a backend counts as alive)"]
    );
}

#[test]
fn affinity_capacity_at_least_1024() {
    assert_only_problem(
        &doc("affinity_capacity = 1000", "", ""),
        "affinity_capacity",
        "1000 is too small: must be at least 1024",
    );
}

#[test]
fn paths_absolute_and_socket_path_short() {
    assert_only_problem(
        &doc("pin_path = \"bpf\"", "", ""),
        "pin_path",
        "is relative",
    );
    assert_only_problem(
        &doc("pin_path = \"/sys/fs/bpf/\"", "", ""),
        "pin_path",
        "is shared with other software",
    );
    assert_only_problem(
        &doc("control_socket = \"x.sock\"", "", ""),
        "control_socket",
        "is relative",
    );
    let long = format!("/run/{}.sock", "s".repeat(100));
    assert_only_problem(
        &doc(&format!("control_socket = \"{long}\""), "", ""),
        "control_socket",
        "path is 110 bytes long; a Unix socket path is at most 107",
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = r#"
interface = ""
affinity_capacity = 10

[health]
fall = 0

[[vip]]
name = "web"
address = "192.0.2.10"
port = 80
table_size = 100
affinity_timeout = "1s"

[[vip.backend]]
address = "10.0.0.11"
port = 80
weight = 100000

[[vip.backend]]
address = "10.0.0.11"
port = 80

[[vip]]
name = "empty"
address = "192.0.2.11"
port = 0
"#;
    let err = Config::parse(text).unwrap_err();
    let ConfigError::Invalid(list) = &err else {
        panic!("{err:?}")
    };
    let paths: Vec<&str> = list.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "interface",
            "affinity_capacity",
            "health.fall",
            "vip \"web\" table_size",
            "vip \"web\" affinity_timeout",
            "vip \"web\" backend 10.0.0.11:80 weight",
            "vip \"web\" backend 10.0.0.11:80",
            "vip \"empty\" port",
            "vip \"empty\"",
        ]
    );
    let shown = err.to_string();
    assert!(
        shown.starts_with("invalid config: 9 problems\n  interface: "),
        "{shown}"
    );
    assert_eq!(shown.lines().count(), 10, "{shown}");
}

#[test]
fn backend_not_loopback_unspecified_multicast_or_broadcast() {
    for (addr, needle) in [
        ("127.0.0.1", "is a loopback address"),
        ("127.9.9.9", "is a loopback address"),
        ("0.0.0.0", "is not a unicast address"),
        ("224.0.0.5", "is not a unicast address"),
        ("255.255.255.255", "is not a unicast address"),
    ] {
        let text = MINIMAL.replace("10.0.0.11", addr);
        assert_only_problem(
            &text,
            &format!("vip \"web\" backend {addr}:80 address"),
            needle,
        );
    }
}

#[test]
fn a_live_backend_meets_the_same_address_rules() {
    let c = parse(MINIMAL);
    let mut b = c.vips[0].backends[0].clone();
    b.address = Ipv4Addr::LOCALHOST;
    let p = backend_problems(&b, &c.vips[0]);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        p[0].to_string()
            .starts_with("backend 127.0.0.1:80 address: 127.0.0.1 is a loopback address"),
        "{p:?}"
    );
}

#[test]
fn a_vip_whose_weights_are_all_0_is_warned_about() {
    let two = format!(
        "{}\n[[vip.backend]]\naddress = \"10.0.0.12\"\nport = 80\nweight = 0\n",
        doc("", "", "weight = 0")
    );
    let c = parse(&two);
    let w: Vec<String> = c.warnings().iter().map(ToString::to_string).collect();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].starts_with("vip \"web\": every backend has weight 0")
            && w[0].contains("give at least one backend a weight above 0"),
        "{w:?}"
    );
    // One backend with a weight is enough; so is the default weight.
    let c = parse(&two.replacen("weight = 0", "weight = 3", 1));
    assert_eq!(c.warnings(), vec![]);
    assert_eq!(parse(MINIMAL).warnings(), vec![]);
}
