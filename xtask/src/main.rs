//! `cargo xtask <task>`: the project's entry points. `setup` installs what a
//! fresh machine lacks; `test` and `demo` run it first, so each works from a
//! clean clone on its own.

mod package;
mod setup;
mod util;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "stickylb developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need: the nightly rust-src
    /// component, bpf-linker (built against the nightly toolchain's LLVM),
    /// Debian packages; mount bpffs. Idempotent.
    Setup,
    /// Set up, then run every test: host unit tests, BPF_PROG_TEST_RUN
    /// fixtures against the real XDP object (root), the Debian package
    /// (built first, then installed and removed by tests/tests/package.rs),
    /// and lints.
    Test {
        /// Extra arguments for `cargo test` (after `--`), e.g. a test name.
        #[arg(last = true)]
        cargo_args: Vec<String>,
    },
    /// Check formatting and run clippy with warnings denied.
    Lint,
    /// Set up, then build the Debian package target/debian/stickylb_<version>_<arch>.deb
    /// (release binary, systemd unit, example config, man pages, completions,
    /// docs) and print its path. See docs/packaging.md.
    Package,
    /// Set up, then show stickylb at work in network namespaces: clients
    /// pinned to backends, a backend killed, the daemon restarted, sessions
    /// lost or kept. Tears everything down at the end.
    Demo {
        /// Leave the topology and daemon up for exploring.
        #[arg(long)]
        keep: bool,
        /// Fewer clients and shorter pauses.
        #[arg(long)]
        quick: bool,
        /// Only the multi-node act (three nodes behind a BGP router).
        #[arg(long)]
        only_nodes: bool,
    },
    /// Bring the test network up or down by hand (see docs/testing.md).
    Netns {
        #[command(subcommand)]
        action: NetnsAction,
    },
    /// Set up, then run the benchmarks and write docs/benchmarks.md.
    Bench {
        /// Small counts and short runs (a smoke test of the bench code).
        #[arg(long)]
        quick: bool,
        /// Only these sections (comma-separated: xdp,wrap,live,tcp,control,sync).
        #[arg(long)]
        only: Option<String>,
    },
}

#[derive(Subcommand)]
enum NetnsAction {
    /// Create the namespaces, start backends and the daemon; print how to poke at it.
    Up {
        /// The multi-node network instead: a BGP/ECMP router and this many
        /// stickylb nodes, each with its BIRD (2 to 9).
        #[arg(long)]
        nodes: Option<usize>,
    },
    /// Stop everything `up` started and delete the namespaces.
    Down,
    /// Like `up`, but only while the command runs: Ctrl-C removes it all.
    Hold,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    // Cargo runs xtask in the caller's directory; every path below (and
    // `cargo test`'s idea of the workspace) is relative to its root.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace");
    std::env::set_current_dir(root)?;
    match cli.task {
        Task::Setup => setup::run(),
        Task::Test { cargo_args } => {
            util::require_root("the tests load XDP programs")?;
            setup::run()?;
            // Default members: every crate but lb-ebpf and bench-ebpf,
            // which only build for the BPF target (the build scripts of
            // lb-user and stickylb-tests build them).
            // The package test installs this very .deb (STICKYLB_DEB).
            let deb = package::build()?;
            let mut args = vec!["test", "--", "--nocapture"];
            args.extend(cargo_args.iter().map(String::as_str));
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            util::run(
                std::process::Command::new(cargo)
                    .args(&args)
                    .env("PATH", util::path_with_cargo_bin())
                    .env("STICKYLB_DEB", &deb),
            )?;
            lint()
        }
        Task::Lint => lint(),
        Task::Package => {
            setup::run()?;
            let deb = package::build()?;
            println!("{}", deb.display());
            Ok(())
        }
        Task::Demo {
            keep,
            quick,
            only_nodes,
        } => {
            let mut args = Vec::new();
            if keep {
                args.push("--keep");
            }
            if quick {
                args.push("--quick");
            }
            if only_nodes {
                args.push("--only-nodes");
            }
            privileged_tool("slb-demo", &["redis-server"], &args)
        }
        Task::Netns { action } => match action {
            NetnsAction::Up { nodes: None } => privileged_tool("slb-netns", &[], &["up"]),
            NetnsAction::Up { nodes: Some(n) } => {
                privileged_tool("slb-netns", &[], &["up", "--nodes", &n.to_string()])
            }
            NetnsAction::Down => privileged_tool("slb-netns", &[], &["down"]),
            NetnsAction::Hold => privileged_tool("slb-netns", &[], &["hold"]),
        },
        Task::Bench { quick, only } => {
            let mut args = Vec::new();
            if quick {
                args.push("--quick".to_owned());
            }
            if let Some(o) = only {
                args.push("--only".to_owned());
                args.push(o);
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            privileged_tool("slb-bench", setup::BENCH_PACKAGES, &args)
        }
    }
}

/// Sets up (plus `packages`), builds the test crate's binaries in release
/// mode and runs `bin` as root.
fn privileged_tool(bin: &str, packages: &[&str], args: &[&str]) -> Result<()> {
    util::require_root(&format!(
        "{bin} creates network namespaces and loads XDP programs"
    ))?;
    setup::run()?;
    setup::debian_packages(packages)?;
    util::cargo(&[
        "build",
        "--release",
        "--quiet",
        "-p",
        "stickylb-tests",
        "--bins",
    ])?;
    let target = std::env::var_os("CARGO_TARGET_DIR").unwrap_or_else(|| "target".into());
    let path = std::path::Path::new(&target).join("release").join(bin);
    util::run(std::process::Command::new(path).args(args))
}

fn lint() -> Result<()> {
    util::step("lint: rustfmt, clippy (host crates, the XDP program and the bench's)");
    util::cargo(&["fmt", "--all", "--", "--check"])?;
    util::cargo(&["clippy", "--all-targets", "--", "-D", "warnings"])?;
    util::run(
        setup::nightly("cargo")
            .args(["clippy", "--package", "lb-ebpf", "--package", "bench-ebpf"])
            .arg("--release")
            .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
            .args(["--", "-D", "warnings"])
            .env("PATH", util::path_with_cargo_bin()),
    )
}
