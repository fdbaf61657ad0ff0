//! The daemon's replies as people read them: tables and one-line answers.

use std::io::Write;

use lb_common::counters::CounterTable as _;
use serde::de::DeserializeOwned;

use super::args::{BackendAction, Query};
use crate::api::MacSource;
use crate::api::{
    BackendAdded, BackendChanged, BackendRemoved, FlowsReply, LookupReply, MaintenanceReply,
    ReloadReply, StatusReply, VipStatus,
};
use crate::fmt::fmt_millis;

/// Prints the daemon's `result` for `query` in words.
pub fn reply(out: &mut dyn Write, query: &Query, result: serde_json::Value) -> anyhow::Result<()> {
    match query {
        Query::Status => status(out, &parse(result)?),
        Query::Backends => backends(out, &parse(result)?),
        Query::Lookup { .. } => lookup(out, &parse(result)?),
        Query::Flows { .. } => flows(out, &parse(result)?),
        Query::Reload => reload(out, &parse(result)?),
        Query::Maintenance { .. } => maintenance(out, &parse(result)?),
        Query::Backend { action } => {
            // Parsed only to hold the daemon to its contract: the words are
            // the same for every change.
            match action {
                BackendAction::Add { .. } => {
                    let _: BackendAdded = parse(result)?;
                }
                BackendAction::Remove { .. } => {
                    let _: BackendRemoved = parse(result)?;
                }
                BackendAction::Weight { .. }
                | BackendAction::Drain { .. }
                | BackendAction::Undrain { .. } => {
                    let _: BackendChanged = parse(result)?;
                }
            }
            Ok(writeln!(out, "ok")?)
        }
    }
}

/// The sync's part of `status`: the node's join, then a line per peer.
fn sync_status(out: &mut dyn Write, s: &crate::api::SyncStatus) -> anyhow::Result<()> {
    let joined = match (s.ready, s.joined_from) {
        (false, _) => "JOINING: pulling a peer's table, not announcing yet".to_owned(),
        (true, Some(p)) => format!("ready (joined with the table of {p})"),
        (true, None) if s.peers.is_empty() => "ready (no peers)".to_owned(),
        (true, None) => "ready alone (no peer sent its table in time)".to_owned(),
    };
    writeln!(out, "sync on {}: {joined}", s.listen)?;
    let rejected: u64 = s.rejected.values().sum();
    if rejected > 0 {
        let why: Vec<String> = s.rejected.iter().map(|(r, n)| format!("{r} {n}")).collect();
        writeln!(
            out,
            "  connections rejected: {rejected} ({}); nothing they sent was applied",
            why.join(", ")
        )?;
    }
    if s.untranslated > 0 {
        writeln!(
            out,
            "  data-path events not sent (unknown ids): {}",
            s.untranslated
        )?;
    }
    if s.from_unknown_address > 0 {
        writeln!(
            out,
            "  connections from addresses that are no peer's: {}",
            s.from_unknown_address
        )?;
    }
    for p in &s.peers {
        let lag = match (p.lag_p50_ms, p.lag_p99_ms) {
            (Some(a), Some(b)) => format!("  lag p50 {} p99 {}", fmt_millis(a), fmt_millis(b)),
            _ => String::new(),
        };
        writeln!(
            out,
            "  peer {} {} for {}s  sent {} (corrections {}) received {} applied {} not applied {} \
             dropped {} queued {}{lag}",
            p.address,
            p.state,
            p.since_s,
            p.sent,
            p.corrections_sent,
            p.received,
            p.applied,
            p.rejected,
            p.dropped,
            p.queued
        )?;
        if p.state != crate::api::PeerState::Up
            && let Some(e) = &p.last_error
        {
            writeln!(out, "    last error: {e}")?;
        }
    }
    Ok(())
}

fn parse<T: DeserializeOwned>(result: serde_json::Value) -> anyhow::Result<T> {
    serde_json::from_value(result).map_err(|e| {
        anyhow::anyhow!(
            "the daemon's reply is not what this CLI expects ({e}); \
             is the daemon another version of stickylb?"
        )
    })
}

fn status(out: &mut dyn Write, s: &StatusReply) -> anyhow::Result<()> {
    writeln!(
        out,
        "stickylb pid {} on {} ({}), up {}s, state pinned at {}",
        s.pid,
        s.interface,
        s.attached,
        s.uptime_s,
        s.pin_path.display()
    )?;
    if let Some(c) = &s.clients_counted {
        writeln!(
            out,
            "clients counted {} ago ({} affinity entries, walked in {})",
            fmt_millis(c.age_ms),
            c.entries,
            fmt_millis(c.walk_ms)
        )?;
    }
    let l = &s.local_errors;
    if l.checks > 0 {
        writeln!(
            out,
            "local errors: {} health checks could not run (last: {}); backends kept their state",
            l.checks,
            l.last_check_error.as_deref().unwrap_or("?")
        )?;
    }
    if l.refused_metrics + l.refused_control > 0 {
        writeln!(
            out,
            "connections refused over the cap: {} metrics, {} control",
            l.refused_metrics, l.refused_control
        )?;
    }
    if let Some(a) = &s.announce {
        writeln!(
            out,
            "announcing in table {} (protocol {}){}",
            a.table,
            a.protocol,
            if s.maintenance {
                "; MAINTENANCE: every VIP withdrawn, what arrives is still served"
            } else {
                ""
            }
        )?;
    } else if s.maintenance {
        writeln!(out, "MAINTENANCE (no [announce]: nothing to withdraw)")?;
    }
    if let Some(sync) = &s.sync {
        sync_status(out, sync)?;
    }
    if let Some(t) = &s.tunnel {
        writeln!(
            out,
            "tunnel: outer source {}{}, GUE port {}, TTL {}",
            t.source,
            t.source_prefix.as_ref().map_or(String::new(), |p| format!(
                " (IP-in-IP: per client from {p})"
            )),
            t.gue_port,
            t.ttl
        )?;
    }
    for v in &s.vips {
        writeln!(out)?;
        writeln!(
            out,
            "VIP {} {}:{}/{}  table {}  affinity timeout {}s{}  {}/{} backends alive{}",
            v.name,
            v.address,
            v.port,
            v.protocol,
            v.table_size,
            v.affinity_timeout_s,
            forwarding(v),
            v.alive_backends,
            v.backends.len(),
            match (v.warming, &v.warming_why) {
                (false, _) => String::new(),
                (true, Some(why)) => format!("  WARMING UP: {why}"),
                (true, None) =>
                    "  WARMING UP: not serving until every backend's first check is in".to_owned(),
            }
        )?;
        if let Some(a) = &v.announce {
            match (a.announced, a.reason) {
                (true, None) => writeln!(out, "  announced")?,
                (true, Some(r)) => writeln!(
                    out,
                    "  announced for another VIP on its address; this one: {r}"
                )?,
                (false, Some(r)) => writeln!(out, "  not announced: {r}")?,
                (false, None) => writeln!(out, "  not announced yet")?,
            }
        }
        writeln!(out, "  {}", v.counters.status_line())?;
        backend_table(out, v)?;
    }
    Ok(())
}

/// The VIP's mode in its status line; nothing for DSR, the default, whose
/// lines read as they always did.
fn forwarding(v: &VipStatus) -> String {
    if v.forwarding.is_tunnel() {
        format!("  forwarding {}", v.forwarding)
    } else {
        String::new()
    }
}

fn backends(out: &mut dyn Write, s: &StatusReply) -> anyhow::Result<()> {
    for v in &s.vips {
        writeln!(
            out,
            "VIP {} {}:{}/{}{}",
            v.name,
            v.address,
            v.port,
            v.protocol,
            forwarding(v)
        )?;
        backend_table(out, v)?;
    }
    Ok(())
}

fn backend_table(out: &mut dyn Write, v: &VipStatus) -> anyhow::Result<()> {
    writeln!(
        out,
        "  {:<22} {:<10} {:>6} {:<17} {:>8} {:>7} {:>10} {:>12}  CHECK",
        "BACKEND", "STATE", "WEIGHT", "MAC", "SLOTS", "CLIENTS", "PACKETS", "BYTES"
    )?;
    for b in &v.backends {
        let check = match (&b.check, b.check_latency_ms) {
            (Some(c), Some(l)) => format!("{c} in {l:.1}ms"),
            (Some(c), None) => c.clone(),
            _ => "-".into(),
        };
        writeln!(
            out,
            "  {:<22} {:<10} {:>6} {:<17} {:>8} {:>7} {:>10} {:>12}  {check}; {}",
            b.address.to_string(),
            b.state,
            b.weight,
            match (&b.mac, b.mac_source) {
                (Some(m), _) => m.as_str(),
                (None, MacSource::Routed) => "(routed)",
                (None, _) => "(unknown)",
            },
            b.slots,
            b.clients,
            b.counters.packets,
            b.counters.bytes,
            b.reason
        )?;
    }
    Ok(())
}

fn lookup(out: &mut dyn Write, rows: &LookupReply) -> anyhow::Result<()> {
    for r in rows {
        let to = r.backend.map_or("(dropped)".to_owned(), |b| b.to_string());
        writeln!(out, "{} on {}: {} ({})", r.client, r.vip, to, r.reason)?;
        if let (Some(age), Some(idle)) = (r.affinity_age_ms, r.affinity_idle_ms) {
            writeln!(
                out,
                "  affinity entry: pinned {} ago, idle {}",
                fmt_millis(age),
                fmt_millis(idle)
            )?;
        }
    }
    Ok(())
}

fn flows(out: &mut dyn Write, reply: &FlowsReply) -> anyhow::Result<()> {
    let rows = &reply.flows;
    writeln!(
        out,
        "{:<12} {:<16} {:<22} {:>9} {:>9} live",
        "VIP", "CLIENT", "BACKEND", "AGE", "IDLE"
    )?;
    for f in rows {
        let b = f.backend.map_or("(removed)".to_owned(), |b| b.to_string());
        writeln!(
            out,
            "{:<12} {:<16} {:<22} {:>9} {:>9} {}",
            f.vip,
            f.client.to_string(),
            b,
            fmt_millis(f.age_ms),
            fmt_millis(f.idle_ms),
            if f.live { "yes" } else { "no" }
        )?;
    }
    if reply.truncated {
        writeln!(
            out,
            "{} of {} entries (the first by VIP and client; --limit N for more, \
             --vip or --backend to narrow)",
            rows.len(),
            reply.total
        )?;
    } else {
        writeln!(out, "{} entries", rows.len())?;
    }
    Ok(())
}

fn maintenance(out: &mut dyn Write, r: &MaintenanceReply) -> anyhow::Result<()> {
    let state = if r.maintenance { "on" } else { "off" };
    if !r.changed {
        writeln!(out, "maintenance was {state} already")?;
    } else if r.maintenance {
        writeln!(
            out,
            "maintenance on: every VIP withdrawn; what still arrives is forwarded"
        )?;
    } else {
        writeln!(out, "maintenance off")?;
    }
    if !r.maintenance {
        let list: Vec<String> = r.announced.iter().map(ToString::to_string).collect();
        writeln!(
            out,
            "announced: {}",
            if list.is_empty() {
                "none".to_owned()
            } else {
                list.join(", ")
            }
        )?;
    }
    Ok(())
}

fn reload(out: &mut dyn Write, r: &ReloadReply) -> anyhow::Result<()> {
    writeln!(out, "reloaded: {}", r.diff)?;
    for w in &r.warnings {
        writeln!(out, "warning: {w}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{BackendState, BackendStatus, LookupResult, MacSource};
    use serde_json::json;

    fn printed(query: &Query, result: serde_json::Value) -> String {
        let mut out = Vec::new();
        reply(&mut out, query, result).unwrap();
        String::from_utf8(out).unwrap()
    }

    fn vip() -> VipStatus {
        VipStatus {
            name: "web".into(),
            address: "192.0.2.10".parse().unwrap(),
            port: 80,
            protocol: "tcp".into(),
            table_size: 7,
            affinity_timeout_s: 300.0,
            forwarding: crate::config::Forwarding::Dsr,
            alive_backends: 1,
            warming: false,
            warming_why: None,
            announce: None,
            counters: Default::default(),
            backends: vec![BackendStatus {
                id: 0,
                address: "10.0.0.11:80".parse().unwrap(),
                state: BackendState::UpNoMac,
                reason: "2 passed tcp checks".into(),
                weight: 1,
                drained: false,
                mac: None,
                mac_source: MacSource::Unknown,
                check: Some("connected".into()),
                check_latency_ms: Some(0.25),
                slots: 0,
                clients: 0,
                counters: Default::default(),
                from_config: true,
                checker_restarts: 0,
            }],
        }
    }

    /// An adopted daemon's status, no clients counted and no local errors.
    fn status(vips: Vec<VipStatus>) -> StatusReply {
        StatusReply {
            pid: 42,
            interface: "eth0".into(),
            attached: crate::api::AttachState::Adopted,
            config: "/etc/stickylb.toml".into(),
            pin_path: "/sys/fs/bpf/stickylb".into(),
            uptime_s: 9,
            passed: Default::default(),
            clients_counted: None,
            vips,
            tunnel: None,
            local_errors: Default::default(),
            sync: None,
            maintenance: false,
            announce: None,
        }
    }

    #[test]
    fn status_says_per_vip_whether_it_is_announced_and_why_not() {
        use crate::{
            announce::NotAnnounced,
            api::{AnnounceStatus, VipAnnounce},
        };
        let with = |announced, reason| {
            let mut v = vip();
            v.announce = Some(VipAnnounce { announced, reason });
            v
        };
        let mut s = status(vec![
            with(true, None),
            with(false, Some(NotAnnounced::NoAliveBackend)),
            with(true, Some(NotAnnounced::WarmingUp)),
        ]);
        s.announce = Some(AnnounceStatus {
            table: 200,
            protocol: 250,
            withdraw_delay_ms: 2000,
        });
        let text = printed(&Query::Status, serde_json::to_value(&s).unwrap());
        assert!(
            text.contains("announcing in table 200 (protocol 250)\n"),
            "{text}"
        );
        assert!(!text.contains("MAINTENANCE"), "{text}");
        let lines: Vec<&str> = text.lines().filter(|l| l.contains("announced")).collect();
        assert_eq!(
            lines,
            [
                "  announced",
                "  not announced: no alive backend",
                "  announced for another VIP on its address; this one: warming up (waiting for \
                 the backends' first checks)"
            ]
        );
        s.maintenance = true;
        let text = printed(&Query::Status, serde_json::to_value(&s).unwrap());
        assert!(
            text.contains("; MAINTENANCE: every VIP withdrawn"),
            "{text}"
        );
        // Without [announce], nothing about it.
        let text = printed(
            &Query::Status,
            serde_json::to_value(status(vec![vip()])).unwrap(),
        );
        assert!(!text.contains("announc"), "{text}");
    }

    #[test]
    fn maintenance_replies_in_words() {
        let q = Query::Maintenance {
            state: super::super::args::OnOff::On,
        };
        let on = json!({"maintenance": true, "changed": true, "announced": []});
        assert_eq!(
            printed(&q, on),
            "maintenance on: every VIP withdrawn; what still arrives is forwarded\n"
        );
        let again = json!({"maintenance": true, "changed": false, "announced": []});
        assert_eq!(printed(&q, again), "maintenance was on already\n");
        let off = json!({"maintenance": false, "changed": true, "announced": ["192.0.2.10"]});
        assert_eq!(printed(&q, off), "maintenance off\nannounced: 192.0.2.10\n");
    }

    #[test]
    fn status_prints_every_field_it_names() {
        let s = status(vec![vip()]);
        let text = printed(&Query::Status, serde_json::to_value(&s).unwrap());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "stickylb pid 42 on eth0 (adopted from the previous run), up 9s, state pinned at /sys/fs/bpf/stickylb"
        );
        assert_eq!(
            lines[2],
            "VIP web 192.0.2.10:80/tcp  table 7  affinity timeout 300s  1/1 backends alive"
        );
        assert_eq!(
            lines[5],
            "  10.0.0.11:80           up (no MAC)      1 (unknown)                0       0          0            0  connected in 0.2ms; 2 passed tcp checks"
        );
        let text = printed(&Query::Backends, serde_json::to_value(&s).unwrap());
        assert!(
            text.starts_with("VIP web 192.0.2.10:80/tcp\n  BACKEND"),
            "{text}"
        );
    }

    #[test]
    fn status_shows_a_tunnel_vips_mode_its_settings_and_routed_backends() {
        let mut v = vip();
        v.forwarding = crate::config::Forwarding::Gue;
        v.backends[0].state = BackendState::Up;
        v.backends[0].mac_source = MacSource::Routed;
        let mut s = status(vec![v]);
        s.tunnel = Some(crate::api::TunnelStatus {
            source: "192.0.2.2".parse().unwrap(),
            source_prefix: Some("10.200.0.0/16".into()),
            gue_port: 6080,
            ttl: 64,
        });
        let text = printed(&Query::Status, serde_json::to_value(&s).unwrap());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[1],
            "tunnel: outer source 192.0.2.2 (IP-in-IP: per client from 10.200.0.0/16), GUE port \
             6080, TTL 64"
        );
        assert_eq!(
            lines[3],
            "VIP web 192.0.2.10:80/tcp  table 7  affinity timeout 300s  forwarding gue  1/1 \
             backends alive"
        );
        assert_eq!(
            lines[6],
            "  10.0.0.11:80           up              1 (routed)                 0       0          0            0  connected in 0.2ms; 2 passed tcp checks"
        );
        let text = printed(&Query::Backends, serde_json::to_value(&s).unwrap());
        assert!(
            text.starts_with("VIP web 192.0.2.10:80/tcp  forwarding gue\n  BACKEND"),
            "{text}"
        );
        // A reply of a daemon that predates the modes reads as DSR.
        let mut old = serde_json::to_value(status(vec![vip()])).unwrap();
        old["vips"][0].as_object_mut().unwrap().remove("forwarding");
        let parsed: StatusReply = serde_json::from_value(old).unwrap();
        assert_eq!(parsed.vips[0].forwarding, crate::config::Forwarding::Dsr);
        assert_eq!(parsed.tunnel, None);
    }

    #[test]
    fn status_says_when_a_vip_is_warming_up() {
        let mut v = vip();
        v.warming = true;
        let mut out = Vec::new();
        let s = status(vec![v]);
        reply(&mut out, &Query::Status, serde_json::to_value(&s).unwrap()).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.lines().nth(2).unwrap().ends_with(
                "1/1 backends alive  WARMING UP: not serving until every backend's first check is in"
            ),
            "{text}"
        );
        // A daemon that predates the field: serving.
        let mut json = serde_json::to_value(vip()).unwrap();
        json.as_object_mut().unwrap().remove("warming");
        let old: VipStatus = serde_json::from_value(json).unwrap();
        assert!(!old.warming);
    }

    #[test]
    fn status_shows_the_sync_and_its_peers() {
        let mut s = status(vec![]);
        let text = printed(&Query::Status, serde_json::to_value(&s).unwrap());
        assert!(!text.contains("sync"), "{text}");
        s.sync = Some(crate::api::SyncStatus {
            listen: "10.0.0.1:7946".parse().unwrap(),
            ready: true,
            joined_from: Some("10.0.0.2:7946".parse().unwrap()),
            rejected: [("frame_mac".to_owned(), 2)].into_iter().collect(),
            untranslated: 0,
            from_unknown_address: 0,
            peers: vec![crate::api::PeerStatus {
                address: "10.0.0.2:7946".parse().unwrap(),
                state: crate::api::PeerState::Down,
                since_s: 3,
                sent: 10,
                received: 20,
                applied: 18,
                rejected: 2,
                corrections_sent: 0,
                dropped: 1,
                queued: 4,
                last_error: Some("connection refused".into()),
                lag_p50_ms: Some(12),
                lag_p99_ms: Some(40),
                lag_count: 20,
                lag_sum_ms: 300,
            }],
        });
        let text = printed(&Query::Status, serde_json::to_value(&s).unwrap());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[1..],
            [
                "sync on 10.0.0.1:7946: ready (joined with the table of 10.0.0.2:7946)",
                "  connections rejected: 2 (frame_mac 2); nothing they sent was applied",
                "  peer 10.0.0.2:7946 down for 3s  sent 10 (corrections 0) received 20 applied 18 not applied 2 \
                 dropped 1 queued 4  lag p50 12ms p99 40ms",
                "    last error: connection refused",
            ]
        );
    }

    #[test]
    fn status_names_local_errors_only_when_there_are_some() {
        let mut s = status(vec![]);
        let text = printed(&Query::Status, serde_json::to_value(&s).unwrap());
        assert!(
            !text.contains("local errors") && !text.contains("refused"),
            "{text}"
        );
        s.local_errors = crate::api::LocalErrors {
            checks: 3,
            last_check_error: Some("Too many open files (os error 24)".into()),
            refused_metrics: 7,
            refused_control: 0,
        };
        let text = printed(&Query::Status, serde_json::to_value(&s).unwrap());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[1..],
            [
                "local errors: 3 health checks could not run (last: Too many open files (os error 24)); backends kept their state",
                "connections refused over the cap: 7 metrics, 0 control",
            ]
        );
    }

    #[test]
    fn lookup_flows_reload_and_changes() {
        let rows = vec![LookupResult {
            vip: "web".into(),
            client: "10.1.0.1".parse().unwrap(),
            backend: None,
            reason: "no backend alive: frames are dropped".into(),
            slot: None,
            affinity_age_ms: Some(61_500),
            affinity_idle_ms: Some(1500),
        }];
        let q = Query::Lookup {
            client: "10.1.0.1".parse().unwrap(),
            vip: None,
        };
        assert_eq!(
            printed(&q, serde_json::to_value(rows).unwrap()),
            "10.1.0.1 on web: (dropped) (no backend alive: frames are dropped)\n  \
             affinity entry: pinned 1m01s ago, idle 1.5s\n"
        );
        let q = Query::Flows {
            vip: None,
            backend: None,
            limit: 1000,
        };
        let flows = json!([{"vip": "web", "client": "10.1.0.1", "backend": "10.0.0.11:80",
            "age_ms": 5, "idle_ms": 4, "live": true}]);
        assert_eq!(
            printed(&q, flows),
            "VIP          CLIENT           BACKEND                      AGE      IDLE live\n\
             web          10.1.0.1         10.0.0.11:80                 5ms       4ms yes\n\
             1 entries\n"
        );
        let r = json!({"changed": false, "diff": "no changes", "needs_restart": []});
        assert_eq!(printed(&Query::Reload, r), "reloaded: no changes\n");
        let r = json!({"changed": true, "diff": "VIP dns added", "needs_restart": [],
            "warnings": ["vip \"dns\" health.kind: a UDP VIP, but ..."]});
        assert_eq!(
            printed(&Query::Reload, r),
            "reloaded: VIP dns added\nwarning: vip \"dns\" health.kind: a UDP VIP, but ...\n"
        );
        let drain = Query::Backend {
            action: BackendAction::Drain {
                vip: "web".into(),
                backend: "10.0.0.11:80".parse().unwrap(),
            },
        };
        let report = json!({"slots_written": 3, "build_us": 1, "write_us": 2});
        assert_eq!(printed(&drain, report), "ok\n");
    }

    #[test]
    fn a_reply_of_the_wrong_shape_is_an_error() {
        let mut out = Vec::new();
        let err = reply(&mut out, &Query::Reload, json!({"diff": 3})).unwrap_err();
        assert!(err.to_string().contains("another version"), "{err}");
        assert!(out.is_empty());
    }

    #[test]
    fn a_bounded_flows_reply_says_how_many_matched_and_status_how_old_the_counts_are() {
        let q = Query::Flows {
            vip: None,
            backend: None,
            limit: 1,
        };
        let flows = json!({"flows": [{"vip": "web", "client": "10.1.0.1",
            "backend": "10.0.0.11:80", "age_ms": 5, "idle_ms": 4, "live": true}],
            "total": 1_000_000, "truncated": true, "limit": 1});
        let text = printed(&q, flows);
        assert!(
            text.ends_with(
                "yes\n1 of 1000000 entries (the first by VIP and client; --limit N for more, \
                 --vip or --backend to narrow)\n"
            ),
            "{text}"
        );
        let s = StatusReply {
            clients_counted: Some(crate::api::ClientsCounted {
                age_ms: 1500,
                walk_ms: 310,
                entries: 1_000_000,
            }),
            ..status(vec![vip()])
        };
        let text = printed(&Query::Status, serde_json::to_value(&s).unwrap());
        assert_eq!(
            text.lines().nth(1),
            Some("clients counted 1.5s ago (1000000 affinity entries, walked in 310ms)")
        );
    }
}
