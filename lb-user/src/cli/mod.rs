//! The `stickylb` command line: run the sticky XDP load balancer, and see and
//! steer it. `main` is here, in the library, so the test crate can build the
//! same binary under another name.

mod args;
mod lifecycle;
mod print;

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Context as _;
use clap::{CommandFactory as _, Parser as _};

use self::args::{Cli, Command, Query};
use crate::{
    config::{Config, DEFAULT_CONTROL_SOCKET},
    control::{self, Reply},
    daemon::{self, RunOptions},
};

/// Entry point of the `stickylb` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut out = std::io::stdout();
    let done = run(&cli, &mut out).and_then(|()| Ok(out.flush()?));
    match done {
        Ok(()) => ExitCode::SUCCESS,
        // The reader has gone (`stickylb flows | head -1`): what it wanted
        // it has, so this is no failure worth a message.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            if cli.json {
                let text =
                    serde_json::to_string_pretty(&Reply::err(format!("{e:#}"))).unwrap_or_default();
                let _ = writeln!(out, "{text}");
            } else {
                eprintln!("stickylb: {e:#}");
            }
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn run(cli: &Cli, out: &mut dyn Write) -> anyhow::Result<()> {
    match &cli.command {
        Command::Run { fresh, keep } => run_daemon(cli, *fresh, *keep),
        Command::Stop => lifecycle::stop(cli, out),
        Command::Unload { pin_path } => lifecycle::unload(cli, pin_path.as_deref(), out),
        Command::Check => check(cli, out),
        Command::Query(q) => query(cli, q, out),
        Command::Completions { shell } => {
            // Into a buffer: clap_complete panics on a failed write.
            let mut text = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "stickylb", &mut text);
            Ok(out.write_all(&text)?)
        }
        Command::Man => Ok(clap_mangen::Man::new(Cli::command()).render(out)?),
    }
}

fn run_daemon(cli: &Cli, fresh: bool, keep: bool) -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    if keep {
        log::info!(
            "--keep has no effect any more: on SIGTERM/SIGINT the program always keeps \
             forwarding with its state pinned; `stickylb unload` takes it down"
        );
    }
    let opts = RunOptions {
        config_path: config_path(cli)?.to_owned(),
        fresh,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(daemon::run(opts))
}

fn check(cli: &Cli, out: &mut dyn Write) -> anyhow::Result<()> {
    let path = config_path(cli)?;
    let cfg = Config::load_for_this_machine(path)?;
    let backends: usize = cfg.vips.iter().map(|v| v.backends.len()).sum();
    writeln!(
        out,
        "{}: OK ({} VIPs, {backends} backends, interface {})",
        path.display(),
        cfg.vips.len(),
        cfg.interface
    )?;
    Ok(())
}

/// Asks the daemon and prints its answer: as it came with --json, else in
/// words.
fn query(cli: &Cli, q: &Query, out: &mut dyn Write) -> anyhow::Result<()> {
    let result = control::call(&socket(cli)?, &q.request());
    let result = match (q, &cli.config) {
        (Query::Reload, Some(c)) => {
            result.with_context(|| format!("the daemon did not reload {}", c.display()))?
        }
        _ => result?,
    };
    if cli.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&result)?)?;
        return Ok(());
    }
    print::reply(out, q, result)
}

fn config_path(cli: &Cli) -> anyhow::Result<&Path> {
    cli.config
        .as_deref()
        .context("no config file: pass -c FILE (or set STICKYLB_CONFIG)")
}

/// The control socket of the daemon to talk to: `--socket`; else that of
/// the running daemon started with `-c FILE` (its runtime record: right
/// whatever the file says now); else the file's `control_socket`; without
/// `-c`, the only running daemon's, else the default.
fn socket(cli: &Cli) -> anyhow::Result<PathBuf> {
    if let Some(s) = &cli.socket {
        return Ok(s.clone());
    }
    if let Some(r) = lifecycle::running_daemon_record(cli) {
        return Ok(r.control_socket);
    }
    if let Some(c) = &cli.config {
        return control_socket_of(c);
    }
    Ok(PathBuf::from(DEFAULT_CONTROL_SOCKET))
}

/// The file's `control_socket` (or the default), without validating the
/// rest: a file being edited must not keep the CLI from the running daemon.
fn control_socket_of(path: &Path) -> anyhow::Result<PathBuf> {
    Ok(file_field(path, "control_socket")?.unwrap_or_else(|| DEFAULT_CONTROL_SOCKET.into()))
}

/// A path-valued top-level field of the config file, read leniently (the
/// rest of the file may be anything).
fn file_field(path: &Path, field: &str) -> anyhow::Result<Option<PathBuf>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config {}", path.display()))?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        anyhow::anyhow!(
            "config {} is not valid TOML ({}), so its {field} is unknown, and no running \
             daemon was started with it; give {}",
            path.display(),
            e.message(),
            hint(field)
        )
    })?;
    match table.get(field) {
        None => Ok(None),
        Some(toml::Value::String(s)) => Ok(Some(PathBuf::from(s))),
        Some(_) => anyhow::bail!(
            "config {}: {field} must be a string (a path); give {}",
            path.display(),
            hint(field)
        ),
    }
}

/// The option that stands in for a config field the CLI cannot read.
fn hint(field: &str) -> &'static str {
    match field {
        "pin_path" => "--pin-path",
        _ => "--socket",
    }
}
