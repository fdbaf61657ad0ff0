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

/// The `llvm-<major>` features that bpf-linker release offers.
const SUPPORTED_LLVM_MAJORS: &[&str] = &["21", "22", "23"];

/// Debian packages the tests, the demo and the namespace harness use.
pub const PACKAGES: &[&str] = &[
    "iproute2",
    "ethtool",
    "curl",
    "iputils-ping",
    "procps",
    "util-linux",
    // The BGP speaker of the multi-node test bed (tests/src/cluster.rs):
    // one instance per LB node and one on the test router, each in its
    // namespace with its own config, socket and pid file.
    "bird2",
    // Packaging (docs/packaging.md): dpkg-deb builds the .deb,
    // dpkg-shlibdeps computes its library dependencies.
    "dpkg-dev",
    // `man -w` finds the installed package's pages (tests/tests/package.rs).
    "man-db",
    // The systemd tests (tests/tests/systemd.rs): a Debian root made by
    // debootstrap, booted with systemd-nspawn inside a test namespace;
    // systemd-analyze verifies the unit.
    "debootstrap",
    "systemd-container",
    "systemd",
    // promtool, which checks docs/prometheus/ (tests/tests/observability.rs).
    "prometheus",
    // perf, which the bench's profile section (tests/src/bench/profile.rs)
    // records with; its smoke run is part of the tests.
    "linux-perf",
];

/// What `cargo xtask bench` compares stickylb with, and drives it with.
pub const BENCH_PACKAGES: &[&str] = &["haproxy", "nginx", "libnginx-mod-stream", "wrk", "iperf3"];

pub fn run() -> Result<()> {
    step("setup: toolchains");
    let llvm = nightly_llvm()?;
    rust_components()?;
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

/// rust-src (to build `core` for the BPF target) and clippy on nightly;
/// rustfmt and clippy on the toolchain that runs xtask (for `lint`).
fn rust_components() -> Result<()> {
    components("nightly", || nightly("rustup"), &["rust-src", "clippy"])?;
    components("default", || Command::new("rustup"), &["rustfmt", "clippy"])
}

fn components(toolchain: &str, rustup: impl Fn() -> Command, wanted: &[&str]) -> Result<()> {
    let installed = util::output(rustup().args(["component", "list", "--installed"]))?;
    let missing: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|w| !installed.lines().any(|l| l.starts_with(w)))
        .collect();
    if missing.is_empty() {
        eprintln!("{toolchain} toolchain: {} installed", wanted.join(", "));
        return Ok(());
    }
    util::run(rustup().args(["component", "add"]).args(&missing))
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

/// The nightly sysroot's LLVM shared library. Sysroots hold it as
/// `libLLVM.so.<ver>` and/or `libLLVM-<major>-….so`, and one of the two may
/// be a linker script naming the other: only the ELF file can be linked
/// through a symlink, so that is the one chosen, whatever the directory
/// order.
fn llvm_library(libdir: &Path) -> Result<String> {
    let mut names: Vec<String> = fs::read_dir(libdir)
        .with_context(|| format!("read {}", libdir.display()))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| {
            n.starts_with("libLLVM.so.") || (n.starts_with("libLLVM-") && n.ends_with(".so"))
        })
        .collect();
    // Sorted for a deterministic choice; `libLLVM.so.` names first.
    names.sort_by_key(|n| (!n.starts_with("libLLVM.so."), n.clone()));
    let is_elf = |name: &str| {
        let mut magic = [0u8; 4];
        fs::File::open(libdir.join(name))
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
            .is_ok_and(|()| magic == *b"\x7fELF")
    };
    names.into_iter().find(|n| is_elf(n)).with_context(|| {
        format!(
            "no libLLVM shared library (ELF) in {}; see docs/toolchain.md",
            libdir.display()
        )
    })
}

/// The version a bpf-linker binary reports (`bpf-linker 0.13.0` → "0.13.0").
fn linker_version(linker: &Path) -> Option<String> {
    let out = Command::new(linker).arg("--version").output().ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .map(str::to_owned)
}

fn bpf_linker(llvm: &str) -> Result<()> {
    let home = cargo_home();
    let linker = home.join("bin").join("bpf-linker");
    let want = major(llvm);
    if linker.is_file() {
        match linker_llvm_major(&linker) {
            Some(have)
                if have == want
                    && linker_version(&linker).as_deref() != Some(BPF_LINKER_VERSION) =>
            {
                eprintln!(
                    "bpf-linker at {} is not version {BPF_LINKER_VERSION}; rebuilding it",
                    linker.display()
                );
            }
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
    if !SUPPORTED_LLVM_MAJORS.contains(&want) {
        bail!(
            "the nightly rustc uses LLVM {want}, but bpf-linker {BPF_LINKER_VERSION} builds \
             only against LLVM {}; install a nightly with one of those (see \
             docs/toolchain.md), or raise BPF_LINKER_VERSION in xtask/src/setup.rs",
            SUPPORTED_LLVM_MAJORS.join(", ")
        );
    }
    let sysroot = util::output(nightly("rustc").args(["--print", "sysroot"]))?;
    let libdir = Path::new(sysroot.trim()).join("lib");
    let lib = llvm_library(&libdir)?;
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
    // Wait for a dpkg/apt lock held by another installer (unattended
    // upgrades on a fresh machine) instead of failing at once.
    let apt = || {
        let mut c = Command::new("apt-get");
        c.env("DEBIAN_FRONTEND", "noninteractive")
            .args(["-o", "DPkg::Lock::Timeout=300"]);
        c
    };
    util::run(apt().args(["update", "-q"]))?;
    // Packages such as nginx start a service listening on the machine's own
    // namespace when installed; the tests run their own instances inside
    // namespaces, so keep the package scripts from starting anything. A
    // policy file with our marker is one an interrupted run left: ours to
    // remove.
    let policy = Path::new("/usr/sbin/policy-rc.d");
    let ours = fs::read_to_string(policy).is_ok_and(|t| t == POLICY_RC_D);
    let foreign = policy.exists() && !ours;
    if !foreign {
        fs::write(policy, POLICY_RC_D)?;
        fs::set_permissions(policy, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    }
    let result = util::run(
        apt()
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing),
    );
    if !foreign {
        let _ = fs::remove_file(policy);
    }
    result
}

/// Refuses every service start while packages install.
const POLICY_RC_D: &str =
    "#!/bin/sh\n# stickylb setup: no service starts during its installs\nexit 101\n";

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
