//! Every duration of the file is bounded, and the message names the field
//! and the allowed range.

use crate::config::testutil::*;

#[test]
fn health_interval_at_most_an_hour() {
    // What a checker adds to an instant: so large a value made every
    // checker panic at its first probe.
    assert_only_problem(
        &doc(
            "[health]\ninterval = \"500000000000y\"\ntimeout = \"1s\"",
            "",
            "",
        ),
        "health.interval",
        "is too long: must be from 10ms to 1h",
    );
    assert_only_problem(
        &doc("", "[vip.health]\ninterval = \"61m\"", ""),
        "vip \"web\" health.interval",
        "1h 1m is too long: must be from 10ms to 1h",
    );
    parse(&doc("[health]\ninterval = \"1h\"", "", ""));
}

#[test]
fn health_timeout_at_most_a_minute() {
    assert_only_problem(
        &doc(
            "",
            "",
            "[vip.backend.health]\ninterval = \"10m\"\ntimeout = \"2m\"",
        ),
        "vip \"web\" backend 10.0.0.11:80 health.timeout",
        "2m is too long: must be from 1ms to 1m and at most the interval",
    );
    parse(&doc(
        "[health]\ninterval = \"10m\"\ntimeout = \"1m\"",
        "",
        "",
    ));
}

#[test]
fn affinity_timeout_at_most_a_year() {
    assert_only_problem(
        &doc("", "affinity_timeout = \"2y\"", ""),
        "vip \"web\" affinity_timeout",
        "2years is too long: must be from 2s to 1year",
    );
    parse(&doc("", "affinity_timeout = \"1y\"", ""));
}
