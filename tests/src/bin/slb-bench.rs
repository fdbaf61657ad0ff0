//! `slb-bench [--quick] [--only xdp,wrap,profile,live,tcp,control,sync] [--out DIR] [--json FILE]`:
//! runs stickylb's benchmarks and writes the report (`DIR/benchmarks.md`,
//! default docs/) and raw results (default `DIR/benchmarks.json`). Run through
//! `cargo xtask bench`, which installs the tools it needs first.

use std::{path::PathBuf, process::ExitCode};

use stickylb_tests::bench::{self, Ctx, Section, progress};

fn main() -> ExitCode {
    let mut quick = false;
    let mut only: Option<Vec<String>> = None;
    let mut out = PathBuf::from("docs");
    let mut json: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--only" => {
                only = args
                    .next()
                    .map(|v| v.split(',').map(str::to_owned).collect())
            }
            "--out" => out = args.next().map(PathBuf::from).unwrap_or(out),
            "--json" => json = args.next().map(PathBuf::from).or(json),
            other => {
                eprintln!(
                    "slb-bench: unknown argument {other:?}; usage: slb-bench [--quick] [--only xdp,wrap,profile,live,tcp,control,sync] [--out DIR] [--json FILE]"
                );
                return ExitCode::from(2);
            }
        }
    }
    let json = json.unwrap_or_else(|| out.join("benchmarks.json"));
    stickylb_tests::require_root();
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(PathBuf::from))
        .unwrap_or_default();
    let ctx = Ctx {
        quick,
        stickylb_bin: exe_dir.join("stickylb-under-test"),
        backend_bin: exe_dir.join("slb-backend"),
    };
    type Run = fn(&Ctx) -> Result<Section, String>;
    let all: [(&str, &str, Run); 7] = [
        (
            "xdp",
            "Per-packet cost of the XDP program",
            bench::xdp_cost::run,
        ),
        (
            "wrap",
            "Per-packet cost of every path, behind a timing wrapper",
            bench::wrapped::run,
        ),
        ("profile", bench::profile::TITLE, bench::profile::run),
        (
            "live",
            "Live forwarding rate on veth",
            bench::live_rate::run,
        ),
        (
            "tcp",
            "TCP and HTTP through the load balancer",
            bench::tcp_http::run,
        ),
        (
            "control",
            "Control plane and stickiness quality",
            bench::control_plane::run,
        ),
        ("sync", "Affinity sync and node loss", bench::sync::run),
    ];
    if let Some(unknown) = only
        .iter()
        .flatten()
        .find(|k| !all.iter().any(|(key, ..)| key == k))
    {
        eprintln!(
            "slb-bench: --only {unknown:?}: not a section (xdp, wrap, profile, live, tcp, control, sync)"
        );
        return ExitCode::from(2);
    }
    let mut sections = Vec::new();
    let mut failed = Vec::new();
    for (key, title, run) in all {
        if only.as_ref().is_some_and(|o| !o.iter().any(|k| k == key)) {
            continue;
        }
        progress(format!("{title} ..."));
        match run(&ctx) {
            Ok(s) => sections.push(s),
            Err(e) => {
                eprintln!("[bench] {title} FAILED: {e}");
                failed.push(key);
                sections.push(Section {
                    title: title.into(),
                    method: format!("**This section failed in this run:** {e}"),
                    ..Default::default()
                });
            }
        }
    }
    // The targets are read off this run's wrap and live figures, so they
    // are rebuilt whenever either ran (an --only run of other sections
    // leaves the report's table as it was); first, as the page's summary.
    let ran = |key: &str| {
        all.iter()
            .find(|(k, ..)| *k == key)
            .and_then(|(_, title, _)| sections.iter().find(|s| s.title == *title))
            .map(|s| &s.json)
    };
    let (wrap, live) = (ran("wrap"), ran("live"));
    if wrap.is_some() || live.is_some() {
        let t = bench::targets::build(wrap, live);
        sections.insert(0, t);
    }
    let order: Vec<&str> = std::iter::once(bench::targets::TITLE)
        .chain(all.iter().map(|(_, title, _)| *title))
        .collect();
    // With --only, the sections run go into the existing report, which
    // keeps the others.
    let written = match &only {
        Some(keys) => bench::report::splice(&out, &json, &sections, quick, &keys.join(","), &order),
        None => bench::report::write(&out, &json, &sections, quick),
    };
    if let Err(e) = written {
        eprintln!("slb-bench: cannot write the report: {e}");
        return ExitCode::FAILURE;
    }
    progress(format!(
        "report: {}/benchmarks.md, raw results: {}",
        out.display(),
        json.display()
    ));
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!("slb-bench: sections failed: {}", failed.join(", "));
        ExitCode::FAILURE
    }
}
