//! Keeps the benchmark code from rotting: runs the XDP-cost, timing-wrapper
//! and live-rate sections in quick mode and checks only that they produce figures (no
//! timed assertion: how fast anything is, is the report's business).
//! Needs root; CI runs it as root.

use std::path::PathBuf;

use serde_json::Value;
use stickylb_tests::{
    bench::{Ctx, Section, live_rate, profile, wrapped, xdp_cost},
    require_root,
};

fn ctx() -> Ctx {
    Ctx {
        quick: true,
        stickylb_bin: PathBuf::from(env!("CARGO_BIN_EXE_stickylb-under-test")),
        backend_bin: PathBuf::from(env!("CARGO_BIN_EXE_slb-backend")),
    }
}

fn check_shape(s: &Section) {
    assert!(!s.title.is_empty() && !s.method.is_empty(), "{}", s.title);
    assert!(!s.tables.is_empty(), "{}: no table", s.title);
    for t in &s.tables {
        assert!(
            !t.rows.is_empty(),
            "{}: table {:?} is empty",
            s.title,
            t.title
        );
        assert!(
            t.rows.iter().all(|r| r.len() == t.headers.len()),
            "{}: ragged table {:?}",
            s.title,
            t.title
        );
    }
    assert!(!s.plots.is_empty(), "{}: no plot", s.title);
    assert!(s.plots.iter().all(|p| p.svg.starts_with("<svg")));
    assert!(!s.headlines.is_empty(), "{}: no headline", s.title);
}

/// Every `field` of every object in `json[list]`, as a number.
fn figures(json: &Value, list: &str, field: &str) -> Vec<f64> {
    json[list]
        .as_array()
        .unwrap_or_else(|| panic!("no {list} in {json}"))
        .iter()
        .map(|r| {
            r[field]
                .as_f64()
                .unwrap_or_else(|| panic!("{field} missing in {r}"))
        })
        .collect()
}

// One test, so that the two sections never run at the same time.
#[test]
fn xdp_cost_wrapped_and_live_rate_produce_figures() {
    require_root();
    let ctx = ctx();

    let s = xdp_cost::run(&ctx).unwrap_or_else(|e| panic!("xdp_cost: {e}"));
    check_shape(&s);
    let ns = figures(&s.json, "rows", "ns_per_packet");
    assert!(ns.len() >= 8, "{ns:?}");
    assert!(ns.iter().all(|&v| v > 0.0), "ns/packet {ns:?}");

    // Every path behind the timing wrapper (each run checks its path by
    // stickylb's counters and, for new clients, the table's growth).
    let s = wrapped::run(&ctx).unwrap_or_else(|e| panic!("wrapped: {e}"));
    check_shape(&s);
    let ns = figures(&s.json, "rows", "ns_per_packet");
    assert!(ns.len() >= 11, "{ns:?}");
    assert!(ns.iter().all(|&v| v > 0.0), "ns/packet {ns:?}");
    let keys: Vec<&str> = s.json["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .filter_map(|r| r["key"].as_str())
        .collect();
    for k in [
        "wrap_pass",
        "wrap_fwd",
        "wrap_encap",
        "hit_same",
        "hit_1k",
        "hit_big",
        "new_fresh",
        "new_full_fresh",
        "new_full_churned",
        "new_churned",
    ] {
        assert!(keys.contains(&k), "no row {k}: {keys:?}");
    }
    let per_client = s.json["info"]["memory"]["bytes_per_client"]
        .as_f64()
        .expect("memory per client");
    // At least the key and value the map holds for each client.
    assert!(per_client >= 32.0, "bytes per client {per_client}");

    // The profile: perf saw stickylb's JIT code and the affinity table's
    // lookup, and every sample is accounted for.
    let s = profile::run(&ctx).unwrap_or_else(|e| panic!("profile: {e}"));
    check_shape(&s);
    let hit = &s.json["stickylb_hit"];
    let groups = hit["groups"].as_object().expect("groups");
    let share = |g: &str| groups.get(g).and_then(|v| v.as_f64()).unwrap_or(0.0);
    assert!(share(profile::OWN_CODE) > 1.0, "{hit}");
    assert!(share(profile::HASH_LOOKUPS) > 1.0, "{hit}");
    let total: f64 = groups.values().filter_map(|v| v.as_f64()).sum();
    assert!((total - 100.0).abs() < 2.0, "shares sum to {total}: {hit}");

    let s = live_rate::run(&ctx).unwrap_or_else(|e| panic!("live_rate: {e}"));
    check_shape(&s);
    let mpps = figures(&s.json, "runs", "mpps_at_sink");
    assert!(mpps.len() >= 4, "{mpps:?}");
    assert!(mpps.iter().all(|&v| v > 0.0), "Mpps {mpps:?}");
    let generated = figures(&s.json, "runs", "generated");
    assert!(
        generated.iter().all(|&v| v > 0.0),
        "generated {generated:?}"
    );
    // Every forwarding mode and both references ran (each run checks that its
    // frames reached the sink in the mode's shape).
    let ran: Vec<&str> = s.json["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .filter_map(|r| r["forwarder"].as_str())
        .collect();
    for f in [
        "stickylb DSR",
        "stickylb ipip",
        "stickylb gue",
        "floor forwarder",
        "floor-encap",
    ] {
        assert!(ran.contains(&f), "no live run of {f}: {ran:?}");
    }
}
