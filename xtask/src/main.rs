//! `cargo xtask <task>`: the project's entry points. `setup` installs what a
//! fresh machine lacks; `test` and `demo` run it first, so each works from a
//! clean clone on its own.

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
    /// fixtures against the real XDP object (root), and lints.
    Test {
        /// Extra arguments for `cargo test` (after `--`), e.g. a test name.
        #[arg(last = true)]
        cargo_args: Vec<String>,
    },
    /// Check formatting and run clippy with warnings denied.
    Lint,
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::run(),
        Task::Test { cargo_args } => {
            setup::run()?;
            util::require_root("the tests load XDP programs")?;
            // Default members: every crate but lb-ebpf, which only builds
            // for the BPF target (lb-user's build script builds it).
            let mut args = vec!["test", "--", "--nocapture"];
            args.extend(cargo_args.iter().map(String::as_str));
            util::cargo(&args)?;
            lint()
        }
        Task::Lint => lint(),
    }
}

fn lint() -> Result<()> {
    util::step("lint: rustfmt, clippy (host crates and the XDP program)");
    util::cargo(&["fmt", "--all", "--", "--check"])?;
    util::cargo(&["clippy", "--all-targets", "--", "-D", "warnings"])?;
    util::run(
        setup::nightly("cargo")
            .args(["clippy", "--package", "lb-ebpf", "--release"])
            .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
            .args(["--", "-D", "warnings"])
            .env("PATH", util::path_with_cargo_bin()),
    )
}
