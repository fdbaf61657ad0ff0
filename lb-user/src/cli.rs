//! The `stickylb` command line: run the sticky XDP load balancer, and see and
//! steer it. `main` is here, in the library, so the test crate can build the
//! same binary under another name.

use std::{
    io::Write as _,
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
    process::ExitCode,
};

use crate::{
    config::{Config, DEFAULT_CONTROL_SOCKET},
    control::{self, Request},
    daemon::{self, RunOptions},
    lb::{FlowEntry, LookupResult, VipStatus},
};
use anyhow::Context as _;
use clap::{CommandFactory as _, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "stickylb",
    version,
    about = "Sticky L4 load balancer: an XDP program pins every client IP to one backend",
    long_about = "Sticky L4 load balancer. An XDP program pins every client, by IP address, to one \
backend (an affinity table backed by a Maglev table) and forwards by L2 direct server return. \
`stickylb run` loads it and keeps it in step with the config and the backends' health; the \
other commands talk to the running daemon over its control socket."
)]
struct Cli {
    /// Control socket of the daemon to talk to. Default: the config's
    /// `control_socket` when -c is given, else /run/stickylb/stickylb.sock.
    #[arg(long, global = true, env = "STICKYLB_SOCKET")]
    socket: Option<PathBuf>,
    /// Config file (for `run`, `check`; other commands read its control_socket).
    #[arg(short, long, global = true, env = "STICKYLB_CONFIG")]
    config: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load and attach the program and run the daemon until SIGINT/SIGTERM.
    /// State pinned by an earlier run is adopted: no client moves.
    Run {
        /// Replace pinned state from an earlier run instead of adopting it
        /// (clears every affinity entry and counter).
        #[arg(long)]
        fresh: bool,
        /// On exit, leave the program forwarding and the maps pinned.
        #[arg(long)]
        keep: bool,
    },
    /// Validate the config without touching the kernel; lists every problem.
    Check,
    /// VIPs and backends: state, weight, MAC, check, clients, traffic.
    Status,
    /// Backends of every VIP, one line each.
    Backends,
    /// Which backend a client goes to, and why.
    Lookup {
        client: Ipv4Addr,
        #[arg(long)]
        vip: Option<String>,
    },
    /// Affinity entries (client → backend).
    Flows {
        #[arg(long)]
        vip: Option<String>,
        /// Only clients of this backend (ADDRESS:PORT).
        #[arg(long)]
        backend: Option<SocketAddrV4>,
    },
    /// Change backends live. Not written to the config file: a reload
    /// returns to what the file says.
    Backend {
        #[command(subcommand)]
        action: BackendAction,
    },
    /// Re-read the config file and apply the difference (as SIGHUP does).
    Reload,
    /// Print shell completions.
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff).
    Man,
}

#[derive(Subcommand)]
enum BackendAction {
    /// Add a backend; it takes clients once its health check passes.
    Add {
        #[arg(long)]
        vip: String,
        backend: SocketAddrV4,
        #[arg(long, default_value_t = 1)]
        weight: u32,
        /// MAC address; default: from the kernel's neighbour table.
        #[arg(long)]
        mac: Option<String>,
    },
    /// Remove a backend; its clients are re-picked on their next packet.
    Remove {
        #[arg(long)]
        vip: String,
        backend: SocketAddrV4,
    },
    /// Set a backend's weight (0: no new clients).
    Weight {
        #[arg(long)]
        vip: String,
        backend: SocketAddrV4,
        weight: u32,
    },
    /// No new clients for this backend; pinned clients stay until their
    /// entry expires or the backend fails.
    Drain {
        #[arg(long)]
        vip: String,
        backend: SocketAddrV4,
    },
    /// Undo `drain`.
    Undrain {
        #[arg(long)]
        vip: String,
        backend: SocketAddrV4,
    },
}

/// Entry point of the `stickylb` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("stickylb: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn config_path(cli: &Cli) -> anyhow::Result<&Path> {
    cli.config
        .as_deref()
        .context("no config file: pass -c FILE (or set STICKYLB_CONFIG)")
}

fn socket(cli: &Cli) -> anyhow::Result<PathBuf> {
    if let Some(s) = &cli.socket {
        return Ok(s.clone());
    }
    if let Some(c) = &cli.config {
        return control_socket_of(c);
    }
    Ok(PathBuf::from(DEFAULT_CONTROL_SOCKET))
}

/// The file's `control_socket` (or the default), without validating the
/// rest: a file being edited must not keep the CLI from the running daemon.
fn control_socket_of(path: &std::path::Path) -> anyhow::Result<PathBuf> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config {}", path.display()))?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        anyhow::anyhow!(
            "config {} is not valid TOML ({}), so its control_socket is unknown; \
             give --socket",
            path.display(),
            e.message()
        )
    })?;
    match table.get("control_socket") {
        None => Ok(PathBuf::from(DEFAULT_CONTROL_SOCKET)),
        Some(toml::Value::String(s)) => Ok(PathBuf::from(s)),
        Some(_) => anyhow::bail!(
            "config {}: control_socket must be a string (a path); give --socket",
            path.display()
        ),
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let req = match &cli.command {
        Command::Run { fresh, keep } => {
            env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
                .init();
            let opts = RunOptions {
                config_path: config_path(&cli)?.to_owned(),
                fresh: *fresh,
                keep: *keep,
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(daemon::run(opts))?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Check => {
            let path = config_path(&cli)?;
            let cfg = Config::load_for_this_machine(path)?;
            let backends: usize = cfg.vips.iter().map(|v| v.backends.len()).sum();
            println!(
                "{}: OK ({} VIPs, {backends} backends, interface {})",
                path.display(),
                cfg.vips.len(),
                cfg.interface
            );
            return Ok(ExitCode::SUCCESS);
        }
        Command::Completions { shell } => {
            clap_complete::generate(
                *shell,
                &mut Cli::command(),
                "stickylb",
                &mut std::io::stdout(),
            );
            return Ok(ExitCode::SUCCESS);
        }
        Command::Man => {
            clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Status | Command::Backends => Request::Status,
        Command::Lookup { client, vip } => Request::Lookup {
            client: *client,
            vip: vip.clone(),
        },
        Command::Flows { vip, backend } => Request::Flows {
            vip: vip.clone(),
            backend: *backend,
        },
        Command::Reload => Request::Reload,
        Command::Backend { action } => match action {
            BackendAction::Add {
                vip,
                backend,
                weight,
                mac,
            } => Request::BackendAdd {
                vip: vip.clone(),
                backend: *backend,
                weight: *weight,
                mac: mac.clone(),
            },
            BackendAction::Remove { vip, backend } => Request::BackendRemove {
                vip: vip.clone(),
                backend: *backend,
            },
            BackendAction::Weight {
                vip,
                backend,
                weight,
            } => Request::BackendWeight {
                vip: vip.clone(),
                backend: *backend,
                weight: *weight,
            },
            BackendAction::Drain { vip, backend } => Request::BackendDrain {
                vip: vip.clone(),
                backend: *backend,
                drained: true,
            },
            BackendAction::Undrain { vip, backend } => Request::BackendDrain {
                vip: vip.clone(),
                backend: *backend,
                drained: false,
            },
        },
    };
    let result = control::call(&socket(&cli)?, &req)?;
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = std::io::stdout().lock();
    match &cli.command {
        Command::Status => print_status(&mut out, &result)?,
        Command::Backends => print_backends(&mut out, &result)?,
        Command::Lookup { .. } => {
            let rows: Vec<LookupResult> = serde_json::from_value(result)?;
            for r in rows {
                let to = r.backend.map_or("(dropped)".to_owned(), |b| b.to_string());
                writeln!(out, "{} on {}: {} ({})", r.client, r.vip, to, r.reason)?;
                if let (Some(age), Some(idle)) = (r.affinity_age_ms, r.affinity_idle_ms) {
                    writeln!(
                        out,
                        "  affinity entry: pinned {} ago, idle {}",
                        ms(age),
                        ms(idle)
                    )?;
                }
            }
        }
        Command::Flows { .. } => {
            let rows: Vec<FlowEntry> = serde_json::from_value(result)?;
            writeln!(
                out,
                "{:<12} {:<16} {:<22} {:>9} {:>9} live",
                "VIP", "CLIENT", "BACKEND", "AGE", "IDLE"
            )?;
            for f in &rows {
                let b = f.backend.map_or("(removed)".to_owned(), |b| b.to_string());
                writeln!(
                    out,
                    "{:<12} {:<16} {:<22} {:>9} {:>9} {}",
                    f.vip,
                    f.client,
                    b,
                    ms(f.age_ms),
                    ms(f.idle_ms),
                    if f.live { "yes" } else { "no" }
                )?;
            }
            writeln!(out, "{} entries", rows.len())?;
        }
        Command::Reload => {
            let d = result.get("diff").and_then(|d| d.as_str()).unwrap_or("");
            writeln!(out, "reloaded: {d}")?;
        }
        Command::Backend { .. } => writeln!(out, "ok")?,
        _ => writeln!(out, "{result}")?,
    }
    Ok(ExitCode::SUCCESS)
}

fn ms(v: u64) -> String {
    if v >= 60_000 {
        format!("{}m{:02}s", v / 60_000, (v / 1000) % 60)
    } else if v >= 1000 {
        format!("{:.1}s", v as f64 / 1000.0)
    } else {
        format!("{v}ms")
    }
}

fn vips_of(result: &serde_json::Value) -> anyhow::Result<Vec<VipStatus>> {
    Ok(serde_json::from_value(
        result.get("vips").cloned().unwrap_or_default(),
    )?)
}

fn print_status(out: &mut impl std::io::Write, result: &serde_json::Value) -> anyhow::Result<()> {
    let field = |k: &str| {
        result
            .get(k)
            .map(|v| v.to_string().trim_matches('"').to_owned())
            .unwrap_or_default()
    };
    writeln!(
        out,
        "stickylb pid {} on {} ({}), up {}s, state pinned at {}",
        field("pid"),
        field("interface"),
        field("attached"),
        field("uptime_s"),
        field("pin_path")
    )?;
    for v in vips_of(result)? {
        writeln!(out)?;
        writeln!(
            out,
            "VIP {} {}:{}/{}  table {}  affinity timeout {}s  {}/{} backends alive",
            v.name,
            v.address,
            v.port,
            v.protocol,
            v.table_size,
            v.affinity_timeout_s,
            v.alive_backends,
            v.backends.len()
        )?;
        writeln!(
            out,
            "  packets {}  bytes {}  new clients {}  affinity hits {}  re-picked: expired {} dead {}  dropped: no backend {} fragment {}",
            v.counters.packets,
            v.counters.bytes,
            v.counters.new_clients,
            v.counters.affinity_hits,
            v.counters.repick_expired,
            v.counters.repick_dead,
            v.counters.drop_no_backend,
            v.counters.drop_fragment
        )?;
        backend_table(out, &v)?;
    }
    Ok(())
}

fn backend_table(out: &mut impl std::io::Write, v: &VipStatus) -> anyhow::Result<()> {
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
            b.mac.clone().unwrap_or_else(|| "(unknown)".into()),
            b.slots,
            b.clients,
            b.counters.packets,
            b.counters.bytes,
            b.reason
        )?;
    }
    Ok(())
}

fn print_backends(out: &mut impl std::io::Write, result: &serde_json::Value) -> anyhow::Result<()> {
    for v in vips_of(result)? {
        writeln!(
            out,
            "VIP {} {}:{}/{}",
            v.name, v.address, v.port, v.protocol
        )?;
        backend_table(out, &v)?;
    }
    Ok(())
}
