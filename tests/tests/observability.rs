//! The Grafana dashboard (docs/grafana/stickylb.json) and the alert rules
//! (docs/prometheus/stickylb.rules.yml) against the real thing: promtool
//! checks the rules and runs their unit tests; a real daemon in a namespace
//! test bed of this file's own, with real clients, is scraped by a real
//! Prometheus, and every expression of the dashboard and of the rules is
//! evaluated there. Each must parse and evaluate, name only metrics the
//! daemon exports, and the core panels must show data. Needs root.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use stickylb_tests::{
    daemon::{Daemon, PinGuard},
    netns::{
        CLIENT_MAIN_ADDR, ChildGuard, LB_ADDR, Netns, PREFIX, Reaper, Result, VIP, add_bridge,
        attach_peer_xdp, backend_addr, client_addr, client_addrs, daemon_config, plug_into_bridge,
        start_backend_server, vip_on_loopback, wait_for,
    },
    traffic::sweep_in,
};

const STICKYLB: &str = env!("CARGO_BIN_EXE_stickylb-under-test");
const BACKEND: &str = env!("CARGO_BIN_EXE_slb-backend");
const DOCS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs");

/// Where Prometheus listens, in the load balancer's namespace.
const PROMETHEUS: &str = "127.0.0.1:9390";
/// The daemon's `metrics_listen` in `daemon_config`.
const METRICS: &str = "127.0.0.1:9321";

const FAST_HEALTH: &str =
    "kind = \"tcp\"\ninterval = \"200ms\"\ntimeout = \"100ms\"\nrise = 2\nfall = 2";

/// What Grafana's `$__rate_interval` is for a 1 s scrape interval (four
/// scrapes, with one to spare): every rate has samples to work on.
const RATE_INTERVAL: &str = "5s";

/// Panels whose every query must return data from a daemon that has served
/// clients, with [sync] and [announce] configured.
const CORE_PANELS: &[&str] = &[
    "Packets per VIP",
    "Bytes per VIP",
    "Packets per backend",
    "Bytes per backend",
    "New clients vs affinity hits",
    "Alive backends per VIP",
    "Backend state",
    "Health check latency",
    "Clients per backend",
    "Affinity table fill",
    "Affinity table fill (now)",
    "Affinity entries and capacity",
    "Drops by reason",
    "Sync peers",
    "VIP announced",
    "Daemon scraped",
];

/// Series that Prometheus makes of each scrape itself.
const PROMETHEUS_OWN: &[&str] = &["up", "scrape_duration_seconds"];

fn rules_path() -> PathBuf {
    Path::new(DOCS).join("prometheus/stickylb.rules.yml")
}

fn dashboard() -> Value {
    let path = Path::new(DOCS).join("grafana/stickylb.json");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(Path::new(DOCS).join("prometheus"))
        .stdin(Stdio::null())
        .output()
        .expect("run promtool (Debian package prometheus, installed by cargo xtask setup)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn promtool_checks_the_rules_and_runs_their_tests() {
    let out = promtool(&["check", "rules", "stickylb.rules.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
    let out = promtool(&["test", "rules", "stickylb.rules.test.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn every_alert_is_explained_in_the_guide() {
    let guide = fs::read_to_string(Path::new(DOCS).join("monitoring.md")).unwrap();
    let rules = fs::read_to_string(rules_path()).unwrap();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(alerts.len() >= 10, "{alerts:?}");
    let missing: Vec<&&str> = alerts
        .iter()
        .filter(|a| !guide.contains(&format!("| `{a}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "alerts without a row in docs/monitoring.md: {missing:?}"
    );
}

/// Every panel, those inside rows included.
fn panels(dash: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for p in list.as_array().into_iter().flatten() {
            out.push(p);
            if let Some(inner) = p.get("panels") {
                walk(inner, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(&dash["panels"], &mut out);
    out
}

/// (panel title, query) of every query of every panel.
fn panel_queries(dash: &Value) -> Vec<(String, String)> {
    panels(dash)
        .into_iter()
        .flat_map(|p| {
            let title = p["title"].as_str().unwrap_or("?").to_owned();
            p["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |t| (title.clone(), t["expr"].as_str().unwrap_or("").to_owned()))
        })
        .collect()
}

#[test]
fn the_dashboard_is_an_importable_model_with_the_panels() {
    let dash = dashboard();
    let input = &dash["__inputs"][0];
    assert_eq!(input["name"], "DS_PROMETHEUS", "{input}");
    assert_eq!(input["type"], "datasource");
    assert_eq!(input["pluginId"], "prometheus");
    assert!(dash["id"].is_null(), "an exported model has no id");
    assert!(dash["uid"].is_string() && dash["schemaVersion"].is_number());
    let vars: Vec<&str> = dash["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(vars, ["instance", "vip", "backend"]);
    let titles: BTreeSet<&str> = panels(&dash)
        .iter()
        .filter_map(|p| p["title"].as_str())
        .collect();
    let mut want = CORE_PANELS.to_vec();
    want.extend([
        "Affinity misses by reason",
        "Not pinned by reason",
        "Passed to the kernel by reason",
        "Failing backends and checks",
        "Sync entries per peer",
        "Sync lag",
        "Sync queues and losses",
        "Sync connections rejected",
        "Maintenance",
        "Connections refused",
    ]);
    let missing: Vec<&&str> = want.iter().filter(|t| !titles.contains(**t)).collect();
    assert!(missing.is_empty(), "no panel {missing:?} in {titles:?}");
    let mut ids = BTreeSet::new();
    for p in panels(&dash) {
        let title = &p["title"];
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "panel id twice: {title}"
        );
        let pos = &p["gridPos"];
        let (x, w) = (pos["x"].as_u64().unwrap(), pos["w"].as_u64().unwrap());
        assert!(x + w <= 24, "{title} is off the grid: {pos}");
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title} has no query");
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
            assert!(!t["expr"].as_str().unwrap().is_empty(), "{title}");
        }
    }
}

/// The metric names a PromQL expression selects: identifiers outside
/// strings, label matchers, ranges and grouping lists that are neither
/// functions nor keywords.
fn metric_names(expr: &str) -> BTreeSet<String> {
    const GROUPING: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    // PromQL's lexer takes these for keywords wherever they stand (an
    // aggregation may put its `by (...)` before its parenthesis).
    const KEYWORDS: &[&str] = &[
        "bool",
        "and",
        "or",
        "unless",
        "offset",
        "inf",
        "nan",
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
    ];
    let cs: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    // The next '(' opens a list of labels.
    let mut labels_next = false;
    // Skips from an opening character to its closing one, strings inside
    // included.
    let skip = |mut i: usize, close: char| -> usize {
        while i < cs.len() && cs[i] != close {
            if matches!(cs[i], '"' | '\'') {
                let q = cs[i];
                i += 1;
                while i < cs.len() && cs[i] != q {
                    i += if cs[i] == '\\' { 2 } else { 1 };
                }
            }
            i += 1;
        }
        i + 1
    };
    while i < cs.len() {
        let c = cs[i];
        if matches!(c, '"' | '\'' | '`') {
            i += 1;
            while i < cs.len() && cs[i] != c {
                i += if cs[i] == '\\' && c != '`' { 2 } else { 1 };
            }
            i += 1;
        } else if c == '{' {
            i = skip(i + 1, '}');
        } else if c == '[' {
            i = skip(i + 1, ']');
        } else if c == '(' && labels_next {
            labels_next = false;
            i = skip(i + 1, ')');
        } else if c.is_ascii_digit()
            || (c == '.' && cs.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            while i < cs.len() && (cs[i].is_ascii_alphanumeric() || cs[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < cs.len() && (cs[i].is_ascii_alphanumeric() || cs[i] == '_' || cs[i] == ':') {
                i += 1;
            }
            let word: String = cs[start..i].iter().collect();
            let next = cs[i..].iter().find(|c| !c.is_whitespace());
            let lower = word.to_ascii_lowercase();
            if GROUPING.contains(&lower.as_str()) {
                labels_next = true;
            } else if !KEYWORDS.contains(&lower.as_str()) && next != Some(&'(') {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn metric_names_are_found_in_promql() {
    let names = |e| metric_names(e).into_iter().collect::<Vec<_>>();
    assert_eq!(
        names(
            "sum by (job, vip) (rate(a_total{vip=~\"$vip\", x=\"}b\"}[5m])) / on (vip) group_left () \
             (b_total offset 1m + 1.5e3) > bool 0.01 unless c == 1 and label_replace(d, \"e\", \"$1\", \"f\", \"(.*)\")"
        ),
        ["a_total", "b_total", "c", "d"]
    );
    assert_eq!(
        names("sum(x:rate5m) without (instance) or histogram_quantile(0.9, y_bucket)"),
        ["x:rate5m", "y_bucket"]
    );
    assert_eq!(names("up{job=\"stickylb\"} == 0"), ["up"]);
}

/// The namespace test bed: a bridge joining a client namespace, the load
/// balancer's and two backends'. Prefix `obs`, so that it cannot meet
/// another suite's namespaces. Dropped (also on a panic): Prometheus and
/// the daemon killed, pins removed, namespaces deleted; `Reaper` does the
/// same if this process dies without unwinding.
struct Bed {
    prometheus: Option<ChildGuard>,
    daemon: Option<Daemon>,
    servers: Vec<ChildGuard>,
    pin: PinGuard,
    client: Netns,
    lb: Netns,
    backends: Vec<Netns>,
    bridge: Netns,
    peer_pin: PathBuf,
    tmp: PathBuf,
    clients: Vec<Ipv4Addr>,
    _reaper: Reaper,
}

impl Bed {
    fn up(backends: usize, clients: usize) -> Result<Self> {
        stickylb_tests::require_root();
        let id = format!("obs{}", std::process::id() % 100_000);
        let bpf = Path::new("/sys/fs/bpf");
        let (daemon_pin, peer_pin) = (bpf.join(&id), bpf.join(format!("{id}-peer")));
        let tmp = std::env::temp_dir().join(&id);
        let record =
            lb_user::runtime::Record::path_in(Path::new(lb_user::runtime::RECORD_DIR), &daemon_pin);
        let reaper = Reaper::spawn(&id, &[&peer_pin, &daemon_pin, &tmp, &record])?;
        fs::create_dir_all(&tmp).map_err(|e| e.to_string())?;
        let bed = Self {
            prometheus: None,
            daemon: None,
            servers: Vec::new(),
            pin: PinGuard(daemon_pin),
            bridge: Netns::new(&format!("{id}-br"))?,
            client: Netns::new(&format!("{id}-cl"))?,
            lb: Netns::new(&format!("{id}-lb"))?,
            backends: (0..backends)
                .map(|i| Netns::new(&format!("{id}-b{i}")))
                .collect::<Result<_>>()?,
            peer_pin,
            tmp,
            clients: (0..clients).map(client_addr).collect(),
            _reaper: reaper,
        };
        add_bridge(&bed.bridge)?;
        plug_into_bridge(&bed.bridge, &bed.client, "p-cl")?;
        plug_into_bridge(&bed.bridge, &bed.lb, "p-lb")?;
        let cidr = |a: Ipv4Addr| format!("{a}/{PREFIX}");
        bed.lb.ip(&["addr", "add", &cidr(LB_ADDR), "dev", "eth0"])?;
        bed.lb
            .ip(&["addr", "add", &format!("{VIP}/32"), "dev", "eth0"])?;
        for (i, b) in bed.backends.iter().enumerate() {
            plug_into_bridge(&bed.bridge, b, &format!("p-b{i}"))?;
            b.ip(&["addr", "add", &cidr(backend_addr(i)), "dev", "eth0"])?;
            vip_on_loopback(b, VIP)?;
        }
        client_addrs(&bed.client, CLIENT_MAIN_ADDR, &bed.clients, &[])?;
        attach_peer_xdp(&bed.bridge, vec![("p-lb".into(), bed.peer_pin.clone())])?;
        let mut bed = bed;
        for (i, b) in bed.backends.iter().enumerate() {
            let s = start_backend_server(b, BACKEND.as_ref(), &bed.tmp, i, None)?;
            bed.servers.push(s);
        }
        Ok(bed)
    }

    /// The daemon's config: the test network's VIP and backends, plus
    /// [sync] with a peer that never answers and [announce], so that their
    /// families are exported too.
    fn config(&self) -> Result<String> {
        let key = self.tmp.join("sync.key");
        fs::write(&key, "0123456789abcdef0123456789abcdef0123456789abcdef")
            .map_err(|e| e.to_string())?;
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).map_err(|e| e.to_string())?;
        Ok(daemon_config(
            &self.pin.0,
            &self.tmp.join("ctl.sock"),
            VIP,
            self.backends.len(),
            FAST_HEALTH,
            "",
        ) + &format!(
            "\n[sync]\nlisten = \"{LB_ADDR}:7946\"\npeers = [\"10.77.0.99:7946\"]\n\
             key_file = \"{}\"\njoin_timeout = \"1s\"\n\n\
             [announce]\ntable = 200\nwithdraw_delay = \"0s\"\n",
            key.display()
        ))
    }

    fn start_prometheus(&mut self) -> Result<()> {
        let data = self.tmp.join("prometheus");
        fs::create_dir_all(&data).map_err(|e| e.to_string())?;
        let config = self.tmp.join("prometheus.yml");
        fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {}\n\
                 scrape_configs:\n  - job_name: stickylb\n    static_configs:\n      - targets: ['{METRICS}']\n",
                rules_path().display()
            ),
        )
        .map_err(|e| e.to_string())?;
        let log = fs::File::create(self.tmp.join("prometheus.log")).map_err(|e| e.to_string())?;
        let child = self
            .lb
            .command("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", data.display()))
            .arg(format!("--web.listen-address={PROMETHEUS}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("start prometheus: {e}"))?;
        self.prometheus = Some(ChildGuard(child));
        let ready = wait_for(Duration::from_secs(15), || {
            self.get("/-/ready").is_ok_and(|(code, _)| code == 200)
        });
        if !ready {
            return Err(format!(
                "prometheus not ready after 15 s; its log:\n{}",
                self.prometheus_log()
            ));
        }
        Ok(())
    }

    fn prometheus_log(&self) -> String {
        fs::read_to_string(self.tmp.join("prometheus.log")).unwrap_or_default()
    }

    /// One HTTP GET from the load balancer's namespace: status and body.
    fn http(&self, addr: &'static str, path: &str) -> Result<(u16, String)> {
        let path = path.to_owned();
        self.lb.enter(move || {
            let mut s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))
                .map_err(|e| e.to_string())?;
            write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
            let mut raw = String::new();
            s.read_to_string(&mut raw)
                .map_err(|e| format!("GET {path}: {e}"))?;
            let (head, body) = raw
                .split_once("\r\n\r\n")
                .ok_or_else(|| format!("GET {path}: no HTTP head in {raw:?}"))?;
            let code = head
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| format!("GET {path}: bad status line {head:?}"))?;
            Ok((code, body.to_owned()))
        })
    }

    fn get(&self, path: &str) -> Result<(u16, String)> {
        self.http(PROMETHEUS, path)
    }

    /// A Prometheus API call: its `data`, or its error.
    fn api(&self, path: &str, params: &[(&str, &str)]) -> Result<Value> {
        let query: Vec<String> = params
            .iter()
            .map(|(k, v)| format!("{k}={}", encode(v)))
            .collect();
        let (code, body) = self.get(&format!("{path}?{}", query.join("&")))?;
        let v: Value = serde_json::from_str(&body).map_err(|e| format!("{code} {body:?}: {e}"))?;
        if v["status"] != "success" {
            return Err(format!(
                "{} ({}): {}",
                v["errorType"].as_str().unwrap_or("?"),
                code,
                v["error"].as_str().unwrap_or(&body)
            ));
        }
        Ok(v["data"].clone())
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        // Processes first, while their namespaces still exist.
        self.prometheus = None;
        self.daemon = None;
        self.servers.clear();
        let _ = lb_user::dataplane::Dataplane::detach_pinned(
            &self.peer_pin.join(lb_user::dataplane::LINK_PIN_NAME),
        );
        let _ = fs::remove_dir_all(&self.peer_pin);
        let _ = fs::remove_dir_all(&self.tmp);
    }
}

/// Percent-encodes a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The metric names of an exposition text: every sample's, and for each
/// summary and histogram, its series' too.
fn exported_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (it.next(), it.next()) {
                names.insert(name.to_owned());
                let parts: &[&str] = match kind {
                    "summary" => &["_sum", "_count"],
                    "histogram" => &["_sum", "_count", "_bucket"],
                    _ => &[],
                };
                names.extend(parts.iter().map(|p| format!("{name}{p}")));
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_owned());
        }
    }
    names
}

/// `label_values(SELECTOR, LABEL)` of a template variable: (label, selector).
fn label_values_query(q: &str) -> (String, String) {
    let inner = q
        .trim()
        .strip_prefix("label_values(")
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or_else(|| panic!("not label_values(...): {q}"));
    let (sel, label) = inner
        .rsplit_once(',')
        .expect("label_values(selector, label)");
    (label.trim().to_owned(), sel.trim().to_owned())
}

fn result_len(data: &Value) -> usize {
    data["result"].as_array().map_or(0, Vec::len)
}

#[test]
fn every_expression_evaluates_against_a_real_daemon() {
    let t0 = Instant::now();
    let mut bed = Bed::up(2, 20).unwrap();
    let config = bed.config().unwrap();
    let ctl = bed.tmp.join("ctl.sock");
    let d = Daemon::start_in(&bed.lb, &bed.tmp, ctl, STICKYLB.as_ref(), &config, &[]).unwrap();
    d.assert_up(Duration::from_secs(5));
    bed.daemon = Some(d);
    let daemon = bed.daemon.as_ref().unwrap();

    // Clients: pinned on the first sweep (new clients), hits after.
    let clients = bed.clients.clone();
    for round in 0..3 {
        let answered = sweep_in(&bed.client, VIP, &clients);
        assert!(
            answered.iter().all(Option::is_some),
            "round {round}: unanswered {answered:?}\n{}",
            daemon.log_text()
        );
    }

    bed.start_prometheus().unwrap();
    // Enough scrapes for every rate, the census walk done, and every rule
    // evaluated at least once.
    let enough = "count_over_time(stickylb_vip_packets_total[1m]) >= 6 \
                  and on () count(stickylb_affinity_entries) > 0";
    let mut last = String::new();
    let ready = wait_for(Duration::from_secs(20), || {
        let scraped = bed
            .api("/api/v1/query", &[("query", enough)])
            .is_ok_and(|d| result_len(&d) > 0);
        let rules = bed.api("/api/v1/rules", &[]);
        let evaluated = rules.as_ref().is_ok_and(|r| {
            r["groups"].as_array().is_some_and(|g| !g.is_empty())
                && r["groups"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .flat_map(|g| g["rules"].as_array().unwrap())
                    .all(|rule| rule["health"] != "unknown")
        });
        last = format!("scraped {scraped}, rules {rules:?}");
        scraped && evaluated
    });
    assert!(
        ready,
        "no data in time: {last}\nprometheus log:\n{}",
        bed.prometheus_log()
    );

    let (code, text) = bed.http(METRICS, "/metrics").unwrap();
    assert_eq!(code, 200, "{text}");
    let exported = exported_names(&text);
    for must in [
        "stickylb_affinity_capacity",
        "stickylb_affinity_entries",
        "stickylb_sync_peer_up",
        "stickylb_vip_announced",
    ] {
        assert!(
            exported.contains(must),
            "the daemon does not export {must}:\n{text}"
        );
    }
    // Each family the daemon exports is documented.
    let documented = fs::read_to_string(Path::new(DOCS).join("monitoring.md")).unwrap()
        + &fs::read_to_string(Path::new(DOCS).join("scale-out.md")).unwrap();
    let undocumented: Vec<&str> = text
        .lines()
        .filter_map(|l| {
            l.strip_prefix("# TYPE stickylb_")?
                .split_whitespace()
                .next()
        })
        .filter(|name| {
            !documented.contains(&format!("`{name}"))
                && !documented.contains(&format!("`stickylb_{name}"))
        })
        .collect();
    assert!(
        undocumented.is_empty(),
        "families in neither docs/monitoring.md nor docs/scale-out.md: {undocumented:?}"
    );
    let prometheus_names = bed.api("/api/v1/label/__name__/values", &[]).unwrap();
    for own in PROMETHEUS_OWN {
        assert!(
            prometheus_names
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n == own),
            "Prometheus has no {own}: {prometheus_names}"
        );
    }
    let known = |n: &String| exported.contains(n) || PROMETHEUS_OWN.contains(&n.as_str());
    let mut unknown: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut failed = Vec::new();
    let mut empty = Vec::new();

    // The rules: healthy as Prometheus itself evaluates them, and each
    // expression on its own.
    let rules = bed.api("/api/v1/rules", &[]).unwrap();
    let rules: Vec<&Value> = rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    let in_file = fs::read_to_string(rules_path())
        .unwrap()
        .matches("- alert: ")
        .count();
    assert_eq!(rules.len(), in_file, "rules loaded vs in the file");
    for r in &rules {
        let name = r["name"].as_str().unwrap();
        let expr = r["query"].as_str().unwrap();
        if r["health"] != "ok" {
            failed.push(format!("rule {name}: {} ({})", r["health"], r["lastError"]));
        }
        if let Err(e) = bed.api("/api/v1/query", &[("query", expr)]) {
            failed.push(format!("rule {name}: {e}\n    {expr}"));
        }
        for n in metric_names(expr).into_iter().filter(|n| !known(n)) {
            unknown.entry(n).or_default().insert(format!("rule {name}"));
        }
    }

    // The dashboard's variables, as Grafana asks for them.
    let dash = dashboard();
    let mut values: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for v in dash["templating"]["list"].as_array().unwrap() {
        let name = v["name"].as_str().unwrap();
        let (label, sel) = label_values_query(v["query"]["query"].as_str().unwrap());
        let sel = sel.replace("$instance", ".*").replace("$vip", ".*");
        for n in metric_names(&sel).into_iter().filter(|n| !known(n)) {
            unknown
                .entry(n)
                .or_default()
                .insert(format!("variable {name}"));
        }
        let got = bed
            .api(
                &format!("/api/v1/label/{label}/values"),
                &[("match[]", &sel)],
            )
            .unwrap_or_else(|e| panic!("variable {name}: {e}"));
        let got: Vec<String> = got
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect();
        values.insert(name.to_owned(), got);
    }
    let want_backends: Vec<String> = (0..bed.backends.len())
        .map(|i| format!("{}:80", backend_addr(i)))
        .collect();
    assert_eq!(values["instance"], [METRICS], "{values:?}");
    assert_eq!(values["vip"], ["web"], "{values:?}");
    assert_eq!(values["backend"], want_backends, "{values:?}");

    // Every panel's queries, over the last 30 s as a graph would ask, with
    // the variables as chosen in the dashboard: this instance, this VIP,
    // every backend.
    let end = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (start, end) = ((end - 30).to_string(), end.to_string());
    let queries = panel_queries(&dash);
    for (title, expr) in &queries {
        let q = expr
            .replace("$__rate_interval", RATE_INTERVAL)
            .replace("$instance", METRICS)
            .replace("$vip", "web")
            .replace("$backend", ".*");
        assert!(!q.contains('$'), "{title}: a variable left in {q}");
        for n in metric_names(&q).into_iter().filter(|n| !known(n)) {
            unknown
                .entry(n)
                .or_default()
                .insert(format!("panel {title:?}"));
        }
        match bed.api(
            "/api/v1/query_range",
            &[
                ("query", &q),
                ("start", &start),
                ("end", &end),
                ("step", "1"),
            ],
        ) {
            Err(e) => failed.push(format!("panel {title:?}: {e}\n    {q}")),
            Ok(data) if result_len(&data) == 0 && CORE_PANELS.contains(&title.as_str()) => {
                empty.push(format!("panel {title:?}: {q}"));
            }
            Ok(_) => {}
        }
    }
    println!(
        "{} rules and {} panel queries evaluated against a real daemon, {} s in all",
        rules.len(),
        queries.len(),
        t0.elapsed().as_secs()
    );
    // Every problem at once: a broken query often breaks more than one way.
    let mut problems = Vec::new();
    if !unknown.is_empty() {
        problems.push(format!(
            "metrics the daemon does not export: {unknown:#?}\nit exports: {exported:?}"
        ));
    }
    if !failed.is_empty() {
        problems.push(format!("failed to evaluate:\n{}", failed.join("\n")));
    }
    if !empty.is_empty() {
        problems.push(format!(
            "core panels without data:\n{}\n/metrics:\n{text}",
            empty.join("\n")
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
    assert!(t0.elapsed() < Duration::from_secs(60), "{:?}", t0.elapsed());
}
