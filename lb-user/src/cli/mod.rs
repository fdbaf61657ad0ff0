//! The `stickylb` command line: run the sticky XDP load balancer, and see and
//! steer it. `main` is here, in the library, so the test crate can build the
//! same binary under another name.

mod args;
mod decap;
mod lifecycle;
mod man;
mod print;
mod roff;

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Context as _;
use clap::{CommandFactory as _, Parser as _};

use self::args::{Cli, Command, Query};
use crate::{
    config::{Config, ConfigError, DEFAULT_CONTROL_SOCKET, Problem},
    control::{self, Reply},
    daemon::{self, RunOptions},
};

/// Entry point of the `stickylb` binary.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return argument_error(&e),
    };
    let mut out = Stdout(std::io::stdout());
    let done = run(&cli, &mut out).and_then(|()| Ok(out.flush()?));
    match done {
        Ok(()) => ExitCode::SUCCESS,
        // The reader has gone (`stickylb flows | head -1`): what it wanted
        // it has, so this is no failure worth a message.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        // The command printed why already.
        Err(e) if e.is::<Failed>() => ExitCode::FAILURE,
        Err(e) => {
            if cli.json {
                let _ = writeln!(out, "{}", json_error(&e));
            } else {
                to_stderr(&format!("stickylb: {e:#}"));
            }
            ExitCode::FAILURE
        }
    }
}

/// The command line's definition, every subcommand in it: for tests that
/// compare what is made from it (the packaged man pages) with it.
pub fn command() -> clap::Command {
    Cli::command()
}

/// A line for the operator on stderr. Not eprintln!, which panics when
/// stderr is a pipe whose reader has gone (`stickylb check 2>&1 | head -1`).
pub(super) fn to_stderr(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// A command line clap refuses: as clap prints it, or under --json as JSON
/// on stdout. Help and version are printed as asked, whatever --json says.
fn argument_error(e: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    let asked_for_json = std::env::args_os()
        .skip(1)
        .take_while(|a| a != "--")
        .any(|a| a == "--json");
    let shown = matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion);
    if shown || !asked_for_json {
        // clap ignores a failed write, so a closed pipe is no panic here.
        let _ = e.print();
        return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
    }
    let mut text = e.to_string().trim().to_owned();
    if let Some(rest) = text.strip_prefix("error: ") {
        text = rest.to_owned();
    }
    if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        // What clap would print is the help alone.
        text = format!("incomplete command: a subcommand or argument is missing\n\n{text}");
    }
    let reply = serde_json::to_string_pretty(&Reply::err(text)).unwrap_or_default();
    let _ = writeln!(std::io::stdout(), "{reply}");
    ExitCode::from(2)
}

/// `{"ok": false, "error": ...}`, as the daemon's replies; an invalid
/// config's problems also one by one, as `problems: [{path, message}]`.
fn json_error(e: &anyhow::Error) -> String {
    let mut v = serde_json::to_value(Reply::err(format!("{e:#}"))).unwrap_or_default();
    if let Some(ConfigError::Invalid(problems)) = e.downcast_ref::<ConfigError>() {
        v["problems"] = serde_json::to_value(problems).unwrap_or_default();
    }
    serde_json::to_string_pretty(&v).unwrap_or_default()
}

/// A command that reported its own failure (`decap check`): exit 1, with
/// nothing more printed.
#[derive(Debug, thiserror::Error)]
#[error("failed")]
struct Failed;

/// Our own stdout, whose closed pipe is marked as such: an EPIPE from
/// anywhere else (the control socket of a daemon that closed on us) is a
/// failure to report.
struct Stdout(std::io::Stdout);

/// The marker an EPIPE on our own stdout carries.
#[derive(Debug, thiserror::Error)]
#[error("stdout was closed")]
struct StdoutClosed;

fn mark_own(e: std::io::Error) -> std::io::Error {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::io::Error::new(std::io::ErrorKind::BrokenPipe, StdoutClosed)
    } else {
        e
    }
}

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf).map_err(mark_own)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush().map_err(mark_own)
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().is_some_and(|io| {
            io.kind() == std::io::ErrorKind::BrokenPipe
                && io.get_ref().is_some_and(|i| i.is::<StdoutClosed>())
        })
    })
}

fn run(cli: &Cli, out: &mut dyn Write) -> anyhow::Result<()> {
    match &cli.command {
        Command::Run { fresh, keep } => run_daemon(cli, *fresh, *keep),
        Command::Stop => lifecycle::stop(cli, out),
        Command::Unload { pin_path } => lifecycle::unload(cli, pin_path.as_deref(), out),
        Command::Check => check(cli, out),
        Command::Query(q) => query(cli, q, out),
        Command::Decap { action } => decap::run(action, cli.json, out),
        Command::Completions { shell } => {
            // Into a buffer: clap_complete panics on a failed write.
            let mut text = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "stickylb", &mut text);
            Ok(out.write_all(&text)?)
        }
        Command::Man { dir, command } => man::run(cli, dir.as_deref(), command, out),
    }
}

fn run_daemon(cli: &Cli, fresh: bool, keep: bool) -> anyhow::Result<()> {
    // Milliseconds: a failover or a reload happens within a second, and the
    // order of its steps is what a reader of the log needs.
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
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
    let exited = rt.block_on(daemon::run(opts))?;
    // The runtime first (its tasks hold the metrics and control listeners),
    // then the lock: `stickylb stop` returns once the lock is free, and a
    // `stickylb run` right after must find the addresses free too.
    drop(rt);
    drop(exited);
    Ok(())
}

fn check(cli: &Cli, out: &mut dyn Write) -> anyhow::Result<()> {
    let path = config_path(cli)?;
    let cfg = Config::load_for_this_machine(path)?;
    let warnings: Vec<Problem> = cfg.all_warnings();
    let backends: usize = cfg.vips.iter().map(|v| v.backends.len()).sum();
    if cli.json {
        let report = serde_json::json!({
            "config": path,
            "vips": cfg.vips.len(),
            "backends": backends,
            "interface": cfg.interface,
            "warnings": warnings,
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
        return Ok(());
    }
    // On stderr, as problems are: stdout keeps its one line.
    for w in &warnings {
        to_stderr(&format!("warning: {w}"));
    }
    writeln!(
        out,
        "{}: OK ({} VIPs, {backends} backends, interface {}){}",
        path.display(),
        cfg.vips.len(),
        cfg.interface,
        match warnings.len() {
            0 => String::new(),
            1 => ", 1 warning".to_owned(),
            n => format!(", {n} warnings"),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_own_stdouts_broken_pipe_is_quiet() {
        let epipe = || std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        let daemon = anyhow::Error::from(epipe()).context("send the request to /run/x.sock");
        assert!(!is_broken_pipe(&daemon));
        assert!(is_broken_pipe(&anyhow::Error::from(mark_own(epipe()))));
    }
}
