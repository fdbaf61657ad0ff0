//! Every reply through the real reply wrapper and back; the JSON contract.

use super::*;
use serde::de::DeserializeOwned;
use serde_json::json;

/// Serializes as the daemon does (through `control::Reply`) and parses
/// as the CLI does; the value must survive unchanged.
fn round_trip<T: Serialize + DeserializeOwned + PartialEq + fmt::Debug>(v: &T) {
    let reply = crate::control::Reply::ok(v);
    let line = serde_json::to_string(&reply).unwrap();
    let back: crate::control::Reply = serde_json::from_str(&line).unwrap();
    assert!(back.ok, "{line}");
    let parsed: T = serde_json::from_value(back.result.unwrap()).unwrap();
    assert_eq!(&parsed, v, "{line}");
}

fn backend(state: BackendState) -> BackendStatus {
    BackendStatus {
        id: 3,
        address: "10.0.0.11:80".parse().unwrap(),
        state,
        reason: "2 passed tcp checks".into(),
        weight: 2,
        drained: false,
        mac: Some("02:00:00:00:00:0b".into()),
        mac_source: MacSource::Neighbour,
        check: Some("connected".into()),
        check_latency_ms: Some(0.25),
        slots: 509,
        clients: 12,
        counters: BackendStats {
            packets: 100,
            bytes: 6400,
            new_clients: 12,
        },
        from_config: true,
        checker_restarts: 0,
    }
}

fn status() -> StatusReply {
    StatusReply {
        pid: 4242,
        interface: "eth0".into(),
        attached: AttachState::Skb,
        config: "/etc/stickylb/stickylb.toml".into(),
        pin_path: "/sys/fs/bpf/stickylb".into(),
        uptime_s: 61,
        passed: lb_common::global_counter::NAMES
            .iter()
            .zip(1..)
            .map(|(n, c)| ((*n).to_owned(), c))
            .collect(),
        clients_counted: None,
        vips: vec![VipStatus {
            name: "web".into(),
            address: Ipv4Addr::new(192, 0, 2, 10),
            port: 80,
            protocol: "tcp".into(),
            table_size: 1021,
            affinity_timeout_s: 300.0,
            forwarding: crate::config::Forwarding::Dsr,
            alive_backends: 1,
            warming: false,
            warming_why: None,
            announce: None,
            counters: VipStats {
                packets: 1,
                bytes: 2,
                new_clients: 3,
                affinity_hits: 4,
                repick_expired: 5,
                repick_dead: 6,
                probed: 7,
                drop_no_backend: 8,
                drop_fragment: 9,
                drop_loop: 10,
                not_pinned_syn: 11,
                not_pinned_udp_budget: 12,
                ..Default::default()
            },
            backends: vec![
                backend(BackendState::Up),
                backend(BackendState::UpNoMac),
                BackendStatus {
                    mac: None,
                    mac_source: MacSource::Unknown,
                    check: None,
                    check_latency_ms: None,
                    ..backend(BackendState::Unknown)
                },
            ],
        }],
        tunnel: None,
        local_errors: Default::default(),
        sync: None,
        maintenance: false,
        announce: None,
    }
}

#[test]
fn every_reply_round_trips() {
    round_trip(&status());
    let lookup: LookupReply = vec![
        LookupResult {
            vip: "web".into(),
            client: Ipv4Addr::new(10, 1, 0, 1),
            backend: Some("10.0.0.11:80".parse().unwrap()),
            reason: "affinity entry".into(),
            slot: None,
            affinity_age_ms: Some(1200),
            affinity_idle_ms: Some(3),
        },
        LookupResult {
            vip: "dns".into(),
            client: Ipv4Addr::new(10, 1, 0, 1),
            backend: None,
            reason: "no backend alive: frames are dropped".into(),
            slot: Some(17),
            affinity_age_ms: None,
            affinity_idle_ms: None,
        },
    ];
    round_trip(&lookup);
    let flows = FlowsReply {
        flows: vec![FlowEntry {
            vip: "web".into(),
            client: Ipv4Addr::new(10, 1, 0, 1),
            backend: None,
            age_ms: 5,
            idle_ms: 4,
            live: false,
        }],
        total: 3,
        truncated: true,
        limit: 1,
    };
    round_trip(&flows);
    round_trip(&BackendAdded { id: 7 });
    round_trip(&BackendRemoved { id: 7 });
    round_trip(&BackendChanged {
        slots_written: 40,
        build_us: 120,
        write_us: 30,
    });
    let plan = PlanReport {
        needs_restart: vec!["interface".into()],
        removed: vec![RemovedVip {
            name: "old".into(),
            id: 2,
        }],
        vips: vec![VipReport {
            name: "web".into(),
            id: 0,
            change: VipChange::Kept {
                renamed_from: Some("www".into()),
                settings: vec![SettingChange {
                    field: "table_size".into(),
                    from: "251".into(),
                    to: "509".into(),
                }],
            },
            backends: vec![
                BackendReport {
                    address: "10.0.0.12:80".parse().unwrap(),
                    id: 3,
                    change: BackendChange::Added,
                },
                BackendReport {
                    address: "10.0.0.11:80".parse().unwrap(),
                    id: 1,
                    change: BackendChange::Kept {
                        settings: Vec::new(),
                    },
                },
            ],
            removed_backends: vec![RemovedBackend {
                address: "10.0.0.10:80".parse().unwrap(),
                id: 0,
            }],
        }],
        tunnel: Vec::new(),
    };
    assert_eq!(
        plan.to_string(),
        "VIP web: renamed from www table_size 251 -> 509 +10.0.0.12:80 -10.0.0.10:80; \
         VIP old removed; needs a restart to apply: interface"
    );
    let tunnel_only = PlanReport {
        tunnel: vec![SettingChange {
            field: "gue_port".into(),
            from: "6080".into(),
            to: "7000".into(),
        }],
        ..PlanReport::default()
    };
    assert!(!tunnel_only.is_empty());
    assert_eq!(tunnel_only.to_string(), "tunnel: gue_port 6080 -> 7000");
    round_trip(&tunnel_only);
    round_trip(&ReloadReply {
        changed: true,
        diff: plan.to_string(),
        needs_restart: vec!["interface".into()],
        plan,
        warnings: vec!["vip \"dns\" health.kind: a UDP VIP, but ...".into()],
        announce: vec![SettingChange {
            field: "announce table".into(),
            from: "200".into(),
            to: "201".into(),
        }],
    });
}

/// The JSON field names and values scripts see; a rename here is a
/// change of the contract.
#[test]
fn status_json_shape() {
    let v = serde_json::to_value(status()).unwrap();
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "attached",
            "config",
            "interface",
            "local_errors",
            "maintenance",
            "passed",
            "pid",
            "pin_path",
            "uptime_s",
            "vips"
        ]
    );
    assert_eq!(v["attached"], "generic (skb) mode");
    assert_eq!(
        v["local_errors"],
        serde_json::json!({"checks": 0, "refused_metrics": 0, "refused_control": 0})
    );
    assert_eq!(v["passed"]["pass_not_vip"], 7);
    let vip = &v["vips"][0];
    // Counters are flattened into the VIP and backend objects.
    assert_eq!(vip["probed"], 7);
    assert_eq!(vip["backends"][0]["packets"], 100);
    assert_eq!(vip["backends"][0]["address"], "10.0.0.11:80");
    assert_eq!(vip["backends"][0]["mac_source"], "neighbour");
    assert_eq!(vip["backends"][1]["state"], "up_no_mac");
    assert_eq!(
        serde_json::to_value(ReloadReply {
            changed: false,
            diff: "no changes".into(),
            needs_restart: Vec::new(),
            plan: PlanReport::default(),
            warnings: Vec::new(),
            announce: Vec::new(),
        })
        .unwrap(),
        json!({"changed": false, "diff": "no changes", "needs_restart": [],
               "plan": {"needs_restart": [], "removed": [], "vips": []}})
    );
    assert_eq!(
        serde_json::to_value(BackendAdded { id: 4 }).unwrap(),
        json!({"id": 4})
    );
}

#[test]
fn backend_state_words_and_json_values() {
    let all = [
        (BackendState::Up, "up", "up"),
        (BackendState::Draining, "draining", "draining"),
        (BackendState::UpNoMac, "up (no MAC)", "up_no_mac"),
        (BackendState::Down, "down", "down"),
        (BackendState::Unknown, "unknown", "unknown"),
    ];
    for (state, words, value) in all {
        assert_eq!(state.to_string(), words);
        assert_eq!(serde_json::to_value(state).unwrap(), json!(value));
        assert_eq!(
            serde_json::from_value::<BackendState>(json!(value)).unwrap(),
            state
        );
    }
    // The status table pads the state column.
    assert_eq!(format!("[{:<10}]", BackendState::Up), "[up        ]");
    // An older daemon's word is still understood (a CLI upgraded first).
    assert_eq!(
        serde_json::from_value::<BackendState>(json!("up (no MAC)")).unwrap(),
        BackendState::UpNoMac
    );
    let alive: Vec<BackendState> = all
        .iter()
        .map(|(s, ..)| *s)
        .filter(|s| s.is_alive())
        .collect();
    assert_eq!(alive, [BackendState::Up, BackendState::Draining]);
}

#[test]
fn attach_state_words_and_json_values() {
    let all = [
        (Attached::New(AttachMode::Driver), "driver mode"),
        (Attached::New(AttachMode::Skb), "generic (skb) mode"),
        (Attached::Adopted, "adopted from the previous run"),
    ];
    for (attached, words) in all {
        let state = AttachState::from(attached);
        assert_eq!(state.to_string(), words);
        assert_eq!(serde_json::to_value(state).unwrap(), json!(words));
        assert_eq!(
            serde_json::from_value::<AttachState>(json!(words)).unwrap(),
            state
        );
    }
    let err = serde_json::from_value::<AttachState>(json!("driver")).unwrap_err();
    assert!(err.to_string().contains("unknown attach state"), "{err}");
}

#[test]
fn requests_take_ip_and_socket_addresses() {
    // IPv4 addresses keep the JSON they had as Ipv4Addr/SocketAddrV4.
    let req = Request::Flows {
        vip: None,
        backend: Some("10.0.0.2:80".parse().unwrap()),
        limit: None,
    };
    assert_eq!(
        serde_json::to_value(&req).unwrap(),
        json!({"cmd": "flows", "vip": null, "backend": "10.0.0.2:80"})
    );
    let v6 = Request::Lookup {
        client: "2001:db8::1".parse().unwrap(),
        vip: None,
    };
    let text = serde_json::to_string(&v6).unwrap();
    assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), v6);
}

#[test]
fn a_flows_request_without_a_limit_gets_the_default_and_older_replies_parse() {
    // What a CLI before the bound sends.
    let req: Request =
        serde_json::from_value(json!({"cmd": "flows", "vip": "web", "backend": null})).unwrap();
    assert_eq!(
        req,
        Request::Flows {
            vip: Some("web".into()),
            backend: None,
            limit: None
        }
    );
    let req = Request::Flows {
        vip: None,
        backend: None,
        limit: Some(5),
    };
    assert_eq!(
        serde_json::to_value(&req).unwrap(),
        json!({"cmd": "flows", "vip": null, "backend": null, "limit": 5})
    );
    // What a daemon before the bound answers: every entry, in a bare list.
    let old = json!([{"vip": "web", "client": "10.1.0.1", "backend": "10.0.0.11:80",
        "age_ms": 5, "idle_ms": 4, "live": true}]);
    let reply: FlowsReply = serde_json::from_value(old).unwrap();
    assert_eq!(
        (reply.flows.len(), reply.total, reply.truncated),
        (1, 1, false)
    );
    // And a status reply without the counts' age.
    let old_status = json!({"pid": 1, "interface": "eth0", "attached": "driver mode",
        "config": "/etc/stickylb.toml", "pin_path": "/sys/fs/bpf/stickylb", "uptime_s": 3,
        "passed": {}, "vips": []});
    let s: StatusReply = serde_json::from_value(old_status).unwrap();
    assert_eq!(s.clients_counted, None);
    let counted = StatusReply {
        clients_counted: Some(ClientsCounted {
            age_ms: 400,
            walk_ms: 310,
            entries: 1_000_000,
        }),
        ..status()
    };
    round_trip(&counted);
    let v = serde_json::to_value(&counted).unwrap();
    assert_eq!(
        v["clients_counted"],
        json!({"age_ms": 400, "walk_ms": 310, "entries": 1_000_000})
    );
}
