//! "Distance to the floor, against the targets": the goals, each
//! next to the figure of this run that it is about. Nothing is measured
//! here: every figure is read from the raw results (JSON) of the `wrap` and
//! `live` sections of the same run, so the table can never disagree with
//! them; a section that did not run, or failed, leaves its rows "not
//! measured in this run".

use serde_json::{Value, json};

use super::{Section, Table, wrapped::count, xdp_cost::big_label};

pub const TITLE: &str = "Distance to the floor, against the targets";

/// Kernel memory per remembered client when the goal was set (the
/// affinity map's memlock ÷ capacity then): the memory goal is a fraction
/// of it, so it stays fixed while the measured figure moves.
const TODAY_BYTES_PER_CLIENT: f64 = 96.0;

/// The live section's client count the live goal is stated for.
const LIVE_GOAL_CLIENTS: u64 = 1_000_000;
/// The wrap section's big table, as the goal states it.
const WRAP_GOAL_BIG: u64 = 1_000_000;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Goal {
    AtMost(f64),
    AtLeast(f64),
}

impl Goal {
    fn met(self, v: f64) -> bool {
        match self {
            Self::AtMost(g) => v <= g,
            Self::AtLeast(g) => v >= g,
        }
    }
}

/// One goal and what this run says about it.
struct Target {
    path: String,
    goal: Goal,
    goal_text: String,
    /// The figure the goal is about (a ratio), or why there is none.
    figure: Result<f64, String>,
    /// How the figure is shown (units, context).
    shown: String,
    source: String,
}

/// A section's raw results in this run: `None` if it was not run, `Null`
/// if it failed.
type Source<'a> = Option<&'a Value>;

fn section<'a>(key: &str, src: Source<'a>) -> Result<&'a Value, String> {
    match src {
        None => Err(format!(
            "not measured in this run (section `{key}` not run)"
        )),
        Some(Value::Null) => Err(format!("not measured in this run (section `{key}` failed)")),
        Some(v) => Ok(v),
    }
}

fn ratio(v: f64) -> String {
    format!("{v:.2}×")
}

/// A wrap row's ratio to the floor forwarder behind the wrapper in the
/// row's own mode.
fn wrap_target(wrap: Source, key: &str, path: String, goal: Goal, goal_text: &str) -> Target {
    let row = section("wrap", wrap).and_then(|w| {
        w["rows"]
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["key"] == key))
            .ok_or_else(|| format!("not measured in this run (no wrap row `{key}`)"))
    });
    let figure = row.clone().and_then(|r| {
        r["ratio_to_floor_forwarder"]
            .as_f64()
            .ok_or_else(|| format!("not measured in this run (wrap row `{key}` has no ratio)"))
    });
    let source = match row {
        Ok(r) => format!(
            "wrap `{key}`: {}, × floor forwarder behind a {}-client wrapper",
            r["path"].as_str().unwrap_or(key),
            r["wrapper_mode"].as_str().unwrap_or("?")
        ),
        Err(_) => format!("wrap `{key}`"),
    };
    Target {
        path,
        goal,
        goal_text: goal_text.into(),
        shown: figure.as_ref().map_or_else(Clone::clone, |&v| ratio(v)),
        figure,
        source,
    }
}

/// stickylb DSR ÷ the floor forwarder at 1M clients, or at the largest
/// client count the live section ran (a quick run has no 1M).
fn live_target(live: Source) -> Target {
    let goal = Goal::AtLeast(0.75);
    let runs = section("live", live).and_then(|l| {
        l["runs"]
            .as_array()
            .ok_or_else(|| "not measured in this run (no live runs)".to_string())
    });
    let mpps = |runs: &[Value], forwarder: &str, clients: u64| {
        runs.iter()
            .find(|r| r["forwarder"] == forwarder && r["clients"].as_u64() == Some(clients))
            .and_then(|r| r["mpps_at_sink"].as_f64())
    };
    let at = runs.as_ref().ok().and_then(|runs| {
        let both = |n: u64| {
            mpps(runs, "stickylb DSR", n).is_some() && mpps(runs, "floor forwarder", n).is_some()
        };
        if both(LIVE_GOAL_CLIENTS) {
            Some(LIVE_GOAL_CLIENTS)
        } else {
            runs.iter()
                .filter_map(|r| r["clients"].as_u64())
                .filter(|&n| both(n))
                .max()
        }
    });
    let mut path = "live veth rate, 1M clients, ÷ floor forwarder".to_string();
    let (figure, source) = match (&runs, at) {
        (Err(e), _) => (Err(e.clone()), "live".to_string()),
        (Ok(_), None) => (
            Err("not measured in this run (no stickylb DSR and floor forwarder runs with the same clients)".into()),
            "live".to_string(),
        ),
        (Ok(runs), Some(n)) => {
            let label = big_label(u32::try_from(n).unwrap_or(u32::MAX));
            if n != LIVE_GOAL_CLIENTS {
                path += &format!(" (this run: {label} clients, the largest it has; 1M only in a full run)");
            }
            let s = mpps(runs, "stickylb DSR", n).expect("checked");
            let f = mpps(runs, "floor forwarder", n).expect("checked");
            (
                Ok(s / f),
                format!("live: stickylb DSR {s:.2} Mpps ÷ floor forwarder {f:.2} Mpps, {label} clients"),
            )
        }
    };
    Target {
        path,
        goal,
        goal_text: "≥ 0.75×".into(),
        shown: figure.as_ref().map_or_else(Clone::clone, |&v| ratio(v)),
        figure,
        source,
    }
}

fn scaling_target(live: Source) -> Target {
    let figure = section("live", live).and_then(|l| {
        l["scaling"]["stickylb_ratio_2c_1c"]
            .as_f64()
            .ok_or_else(|| "not measured in this run".to_string())
    });
    Target {
        path: "live rate, 2 cores ÷ 1 core (veth with 2 queues)".into(),
        goal: Goal::AtLeast(1.8),
        goal_text: "≥ 1.8×".into(),
        shown: figure.as_ref().map_or_else(Clone::clone, |&v| ratio(v)),
        figure,
        source: "live `scaling.stickylb_ratio_2c_1c`".into(),
    }
}

fn memory_target(wrap: Source) -> Target {
    let mem = section("wrap", wrap).map(|w| &w["info"]["memory"]);
    let bytes = mem.clone().and_then(|m| {
        m["bytes_per_client"]
            .as_f64()
            .ok_or_else(|| "not measured in this run (no memory figure)".to_string())
    });
    let capacity = mem.ok().and_then(|m| m["affinity_capacity"].as_u64());
    Target {
        path: "kernel memory per remembered client (map memlock ÷ capacity)".into(),
        goal: Goal::AtMost(0.6),
        goal_text: format!(
            "report it; ≤ 0.6× of today's {TODAY_BYTES_PER_CLIENT:.0} B ({:.1} B)",
            0.6 * TODAY_BYTES_PER_CLIENT
        ),
        shown: bytes.as_ref().map_or_else(Clone::clone, |&b| {
            format!(
                "{b:.1} B = {} of {TODAY_BYTES_PER_CLIENT:.0} B",
                ratio(b / TODAY_BYTES_PER_CLIENT)
            )
        }),
        figure: bytes.map(|b| b / TODAY_BYTES_PER_CLIENT),
        source: format!(
            "wrap: the affinity map's memlock (fdinfo) ÷ its capacity{}",
            capacity.map_or_else(String::new, |c| format!(" of {}", count(c)))
        ),
    }
}

fn targets(wrap: Source, live: Source) -> Vec<Target> {
    let big = section("wrap", wrap)
        .ok()
        .and_then(|w| w["big_table_clients"].as_u64());
    let mut hit_big = "affinity hit, a random one of 1M clients".to_string();
    if let Some(n) = big.filter(|&n| n != WRAP_GOAL_BIG) {
        hit_big += &format!(
            " (this run: {} clients, the largest it has; 1M only in a full run)",
            big_label(u32::try_from(n).unwrap_or(u32::MAX))
        );
    }
    vec![
        wrap_target(
            wrap,
            "hit_same",
            "affinity hit, the same client every packet".into(),
            Goal::AtMost(2.5),
            "≤ 2.5× floor",
        ),
        wrap_target(
            wrap,
            "hit_1k",
            "affinity hit, a random one of 1k clients".into(),
            Goal::AtMost(2.5),
            "≤ 2.5×",
        ),
        wrap_target(wrap, "hit_big", hit_big, Goal::AtMost(25.0), "≤ 25×"),
        wrap_target(
            wrap,
            "new_fresh",
            "new client every packet, fresh table".into(),
            Goal::AtMost(25.0),
            "≤ 25×",
        ),
        wrap_target(
            wrap,
            "new_full_fresh",
            "new client every packet, table full (evicting)".into(),
            Goal::AtMost(40.0),
            "≤ 40×",
        ),
        live_target(live),
        scaling_target(live),
        memory_target(wrap),
    ]
}

/// The section, from the raw results of this run's `wrap` and `live`
/// sections (`None`: not run in this run).
pub fn build(wrap: Source, live: Source) -> Section {
    let all = targets(wrap, live);
    let mut table = Table {
        title: "Goals of the per-packet cost, the live rate and the memory, against this run"
            .into(),
        headers: ["path", "goal", "this run", "met?", "source row"]
            .map(String::from)
            .to_vec(),
        rows: Vec::new(),
    };
    let mut json_rows = Vec::new();
    let (mut met, mut unmet, mut unmeasured) = (0, 0, 0);
    for t in &all {
        let ok = t.figure.as_ref().ok().map(|&v| t.goal.met(v));
        match ok {
            Some(true) => met += 1,
            Some(false) => unmet += 1,
            None => unmeasured += 1,
        }
        table.rows.push(vec![
            t.path.clone(),
            t.goal_text.clone(),
            t.shown.clone(),
            ok.map_or("–", |m| if m { "yes" } else { "no" }).into(),
            t.source.clone(),
        ]);
        let (bound, kind) = match t.goal {
            Goal::AtMost(g) => (g, "at_most"),
            Goal::AtLeast(g) => (g, "at_least"),
        };
        json_rows.push(json!({
            "path": t.path,
            "goal": t.goal_text,
            "goal_kind": kind,
            "goal_bound": bound,
            "figure": t.figure.as_ref().ok(),
            "shown": t.shown,
            "met": ok,
            "source": t.source,
        }));
    }
    let method = format!(
        "Built from the raw results of this run's `wrap` and `live` sections (below), not a \
         measurement of its own. The per-packet goals are ratios as in the `wrap` section: the \
         row's cost behind the timing wrapper ÷ the floor forwarder behind the wrapper in the \
         row's own mode (same client, a random one of N, a new one), median of the round-by-round \
         ratios. The live goal is stickylb DSR's rate ÷ the floor forwarder's on the same wire, \
         from the `live` section (its 1M-client case runs only in a full run; a quick run shows \
         its largest client count, labelled as such); the scaling goal is the `live` section's \
         two-core ÷ one-core rate. Memory: the affinity map's memlock ÷ its capacity, from the \
         `wrap` section, against the {TODAY_BYTES_PER_CLIENT:.0} B per client of when the goal \
         was set. A goal is met when this run's figure is within its bound; a figure this run \
         did not measure is marked \"–\". Why unmet goals are unmet: see docs/performance.md."
    );
    Section {
        title: TITLE.into(),
        method,
        tables: vec![table],
        plots: Vec::new(),
        json: json!({ "targets": json_rows }),
        headlines: vec![format!(
            "Against the targets (from this run's wrap and live figures): {met} of {} goals met, \
             {unmet} unmet, {unmeasured} not measured in this run",
            all.len()
        )],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wrap(big: u64, hit_same: f64) -> Value {
        let row = |key: &str, mode: &str, r: f64| json!({"key": key, "path": key, "wrapper_mode": mode, "ratio_to_floor_forwarder": r});
        json!({
            "big_table_clients": big,
            "rows": [
                row("hit_same", "same", hit_same),
                row("hit_1k", "random", 2.6),
                row("hit_big", "random", 20.0),
                row("new_fresh", "new", 25.0),
                row("new_full_fresh", "new", 41.0),
            ],
            "info": {"memory": {"bytes_per_client": 57.0, "affinity_capacity": 65536}},
        })
    }

    fn live(clients: &[u64], scaling: Option<f64>) -> Value {
        let mut runs = Vec::new();
        for &n in clients {
            // stickylb at 0.7× the floor, except at 1M, 0.8×.
            let s = if n == 1_000_000 { 8.0 } else { 7.0 };
            runs.push(json!({"forwarder": "stickylb DSR", "clients": n, "mpps_at_sink": s}));
            runs.push(json!({"forwarder": "floor forwarder", "clients": n, "mpps_at_sink": 10.0}));
        }
        let mut v = json!({ "runs": runs });
        if let Some(r) = scaling {
            v["scaling"] = json!({"stickylb_ratio_2c_1c": r});
        }
        v
    }

    fn met(s: &Section) -> Vec<&str> {
        s.tables[0].rows.iter().map(|r| r[3].as_str()).collect()
    }

    #[test]
    fn every_goal_is_judged_by_its_own_bound() {
        let (w, l) = (wrap(1_000_000, 2.5), live(&[1_000, 1_000_000], Some(1.7)));
        let s = build(Some(&w), Some(&l));
        // hit_same at its bound, hit_1k over, hit_big and new_fresh within,
        // evicting over, live 0.8 ≥ 0.75, scaling 1.7 < 1.8, memory 57/96.
        assert_eq!(
            met(&s),
            ["yes", "no", "yes", "yes", "no", "yes", "no", "yes"]
        );
        let rows = &s.tables[0].rows;
        assert_eq!(rows[2][0], "affinity hit, a random one of 1M clients");
        assert_eq!(rows[5][0], "live veth rate, 1M clients, ÷ floor forwarder");
        assert_eq!(rows[5][2], "0.80×");
        assert_eq!(rows[7][2], "57.0 B = 0.59× of 96 B");
        assert!(rows[7][4].ends_with("capacity of 65,536"), "{:?}", rows[7]);
        assert!(s.headlines[0].contains("5 of 8 goals met, 3 unmet, 0 not measured"));
    }

    #[test]
    fn a_quick_run_shows_its_largest_counts_labelled() {
        let (w, l) = (wrap(50_000, 1.0), live(&[1_000, 100_000], None));
        let s = build(Some(&w), Some(&l));
        let rows = &s.tables[0].rows;
        assert!(
            rows[2][0].contains("this run: 50k clients"),
            "{:?}",
            rows[2]
        );
        assert!(
            rows[5][0].contains("this run: 100k clients"),
            "{:?}",
            rows[5]
        );
        assert_eq!(rows[5][2], "0.70×");
        assert_eq!(rows[5][3], "no");
        assert_eq!(rows[6][2], "not measured in this run");
        assert_eq!(rows[6][3], "–");
    }

    #[test]
    fn a_section_not_run_or_failed_measures_nothing() {
        let w = wrap(1_000_000, 1.0);
        let s = build(Some(&w), None);
        assert!(s.tables[0].rows[5][2].contains("section `live` not run"));
        let s = build(Some(&Value::Null), Some(&live(&[1_000], None)));
        assert!(s.tables[0].rows[0][2].contains("section `wrap` failed"));
        assert_eq!(met(&s)[..5], ["–"; 5]);
        assert_eq!(met(&s)[7], "–");
    }
}
