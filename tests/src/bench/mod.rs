//! `cargo xtask bench`: measurements that print figures (never timed
//! assertions). Each section measures its subjects side by side in one run
//! and returns tables, plots and raw JSON; `report` writes
//! docs/benchmarks.md from them.

pub mod control_plane;
pub mod live_rate;
pub mod objects;
pub mod plot;
pub mod profile;
pub mod report;
pub mod sync;
pub mod targets;
pub mod tcp_http;
pub mod wrapped;
pub mod xdp_cost;

use std::path::PathBuf;

/// A table of the report (Markdown).
#[derive(Clone, Debug, Default)]
pub struct Table {
    pub title: String,
    pub headers: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

/// A figure of the report, written next to it as `file`.
#[derive(Clone, Debug)]
pub struct Plot {
    /// File name, e.g. "bench-xdp-cost.svg".
    pub file: String,
    pub svg: String,
    pub caption: String,
}

/// What one benchmark section produced.
#[derive(Clone, Debug, Default)]
pub struct Section {
    pub title: String,
    /// How it was measured (Markdown paragraph).
    pub method: String,
    pub tables: Vec<Table>,
    pub plots: Vec<Plot>,
    /// Raw results for docs/benchmarks.json.
    pub json: serde_json::Value,
    /// One-line headline figures (ratios) for the summary.
    pub headlines: Vec<String>,
}

/// What every section gets.
#[derive(Clone, Debug)]
pub struct Ctx {
    /// Smaller counts and shorter runs: a smoke test of the bench code.
    pub quick: bool,
    /// The `stickylb` binary (for sections that run the daemon).
    pub stickylb_bin: PathBuf,
    /// The `slb-backend` test HTTP server.
    pub backend_bin: PathBuf,
}

/// Progress line on stderr (the report goes to files).
pub fn progress(msg: impl AsRef<str>) {
    eprintln!("[bench] {}", msg.as_ref());
}

/// Median of a non-empty slice.
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}
