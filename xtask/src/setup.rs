//! Idempotent machine setup. Everything a fresh machine lacks to build and
//! test stickylb is installed here, so a clean clone needs nothing by hand.
//! See docs/toolchain.md for why each step is done the way it is.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::util::{self, step};

/// bpf-linker release known to link aya-ebpf 0.2 objects with LLVM 22.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Debian packages the tests, the demo and the namespace harness use.
pub const PACKAGES: &[&str] = &[
    "iproute2",
    "ethtool",
    "curl",
    "iputils-ping",
    "procps",
    "util-linux",
];

/// What `cargo xtask bench` compares stickylb with, and drives it with.
pub const BENCH_PACKAGES: &[&str] = &["haproxy", "nginx", "libnginx-mod-stream", "wrk", "iperf3"];

pub fn run() -> Result<()> {
    step("setup: toolchains");
    let llvm = nightly_llvm()?;
    rust_src()?;
    bpf_linker(&llvm)?;
    if util::is_root() {
        step("setup: Debian packages, bpffs");
        debian_packages(PACKAGES)?;
        bpffs()?;
    } else {
        eprintln!("not root: skipping Debian packages and the bpffs mount");
    }
    Ok(())
}

pub fn cargo_home() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

/// `cargo`/`rustup` for the nightly toolchain, free of the variables the
/// outer (stable) cargo exported for xtask.
pub fn nightly(program: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.arg("+nightly");
    for var in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTUP_TOOLCHAIN",
        "CARGO",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// The nightly toolchain's LLVM version, e.g. "22.1.4".
fn nightly_llvm() -> Result<String> {
    let vv = util::output(nightly("rustc").arg("-vV")).context(
        "the nightly toolchain is needed to build the XDP program and is not installed \
         (`rustup toolchain list` should show it)",
    )?;
    vv.lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .map(|v| v.trim().to_owned())
        .context("`rustc +nightly -vV` printed no LLVM version")
}

fn major(version: &str) -> &str {
    version.split('.').next().unwrap_or(version)
}

fn rust_src() -> Result<()> {
    let installed = util::output(nightly("rustup").args(["component", "list", "--installed"]))?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!("rust-src: installed");
        return Ok(());
    }
    util::run(nightly("rustup").args(["component", "add", "rust-src"]))
}

/// The LLVM major a bpf-linker binary is linked against, if it can load it.
fn linker_llvm_major(linker: &Path) -> Option<String> {
    let ldd = Command::new("ldd").arg(linker).output().ok()?;
    let text = String::from_utf8_lossy(&ldd.stdout);
    let line = text.lines().find(|l| l.contains("libLLVM"))?;
    if line.contains("not found") {
        return None;
    }
    // "libLLVM.so.22.1-rust-..." or "libLLVM-22-rust-....so"
    let name = line.split_whitespace().next()?;
    let rest = name
        .strip_prefix("libLLVM.so.")
        .or_else(|| name.strip_prefix("libLLVM-"))?;
    Some(rest.split(['.', '-']).next()?.to_owned())
}

fn bpf_linker(llvm: &str) -> Result<()> {
    let home = cargo_home();
    let linker = home.join("bin").join("bpf-linker");
    let want = major(llvm);
    if linker.is_file() {
        match linker_llvm_major(&linker) {
            Some(have) if have == want => {
                eprintln!("bpf-linker: {} (LLVM {have})", linker.display());
                return Ok(());
            }
            Some(have) => eprintln!(
                "bpf-linker at {} uses LLVM {have}, but the nightly rustc emits LLVM {want} \
                 bitcode; rebuilding it",
                linker.display()
            ),
            None => eprintln!(
                "bpf-linker at {} cannot load its LLVM library; rebuilding it",
                linker.display()
            ),
        }
    }

    // bpf-linker must use the same LLVM as rustc. No LLVM of that version is
    // packaged here, but the nightly toolchain ships its own libLLVM: link
    // bpf-linker against it through a prefix of symlinks.
    let sysroot = util::output(nightly("rustc").args(["--print", "sysroot"]))?;
    let libdir = Path::new(sysroot.trim()).join("lib");
    let lib = fs::read_dir(&libdir)
        .with_context(|| format!("read {}", libdir.display()))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .find(|n| n.starts_with("libLLVM.so.") || (n.starts_with("libLLVM-") && n.ends_with(".so")))
        .with_context(|| format!("no libLLVM in {}", libdir.display()))?;
    let prefix = home.join("stickylb-llvm");
    let prefix_lib = prefix.join("lib");
    if prefix.exists() {
        fs::remove_dir_all(&prefix)?;
    }
    fs::create_dir_all(&prefix_lib)?;
    let target = libdir.join(&lib);
    for name in ["libLLVM.so", lib.as_str()] {
        std::os::unix::fs::symlink(&target, prefix_lib.join(name))
            .with_context(|| format!("symlink {name} in {}", prefix_lib.display()))?;
    }
    step(&format!(
        "building bpf-linker {BPF_LINKER_VERSION} against {} (about a minute)",
        target.display()
    ));
    let mut cmd = nightly("cargo");
    cmd.env("LLVM_PREFIX", &prefix)
        .args(["install", "--force"])
        .arg(format!("bpf-linker@{BPF_LINKER_VERSION}"))
        .args(["--no-default-features", "--features"])
        .arg(format!("llvm-{want}"))
        .arg("--root")
        .arg(&home);
    util::run(&mut cmd)?;
    match linker_llvm_major(&linker) {
        Some(have) if have == want => Ok(()),
        other => bail!(
            "built bpf-linker, but it links LLVM {other:?} instead of {want}; \
             see docs/toolchain.md"
        ),
    }
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f", "${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

pub fn debian_packages(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        eprintln!("Debian packages: all present");
        return Ok(());
    }
    eprintln!("installing Debian packages: {}", missing.join(" "));
    util::run(Command::new("apt-get").args(["update", "-q"]))?;
    // Packages such as nginx start a service listening on the machine's own
    // namespace when installed; the tests run their own instances inside
    // namespaces, so keep the package scripts from starting anything.
    let policy = Path::new("/usr/sbin/policy-rc.d");
    let had_policy = policy.exists();
    if !had_policy {
        fs::write(policy, "#!/bin/sh\nexit 101\n")?;
        fs::set_permissions(policy, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    }
    let result = util::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing),
    );
    if !had_policy {
        let _ = fs::remove_file(policy);
    }
    result
}

fn bpffs() -> Result<()> {
    if Command::new("mountpoint")
        .args(["-q", "/sys/fs/bpf"])
        .status()
        .is_ok_and(|s| s.success())
    {
        return Ok(());
    }
    util::run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
        .context("mount bpffs on /sys/fs/bpf (needed to pin maps)")
}
