use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};

/// The command line, without the environment `Debug` would print.
pub fn show(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs a command, inheriting stdio; fails if it does.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot start `{}`", show(cmd)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", show(cmd));
    }
    Ok(())
}

/// Runs a command and returns its stdout; fails if it does.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot start `{}`", show(cmd)))?;
    if !out.status.success() {
        bail!("`{}` failed ({})", show(cmd), out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `cargo <args>` with the toolchain that runs xtask, with bpf-linker's
/// folder on PATH for lb-user's build script.
pub fn cargo(args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(cargo)
        .args(args)
        .env("PATH", path_with_cargo_bin()))
}

/// PATH with `$CARGO_HOME/bin` in front (where setup installs bpf-linker).
pub fn path_with_cargo_bin() -> std::ffi::OsString {
    let bin = crate::setup::cargo_home().join("bin");
    let rest = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![bin];
    dirs.extend(std::env::split_paths(&rest));
    std::env::join_paths(dirs).unwrap_or(rest)
}

pub fn is_root() -> bool {
    // Effective uid from /proc avoids a libc dependency for one call.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

pub fn require_root(why: &str) -> Result<()> {
    if !is_root() {
        bail!(
            "{why}: run as root, with your toolchain on PATH (e.g. \
             `sudo env \"PATH=$PATH\" cargo xtask ...`)"
        );
    }
    Ok(())
}

pub fn step(msg: &str) {
    eprintln!("\x1b[1m==> {msg}\x1b[0m");
}
