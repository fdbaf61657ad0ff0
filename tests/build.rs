//! Builds the benchmark's reference XDP programs (tests/bench-ebpf) with the
//! nightly toolchain and bpf-linker, the way lb-user's build script builds
//! the load balancer, so that the benchmark embeds objects compiled like the
//! one it measures.

use std::{env, path::PathBuf};

use anyhow::{Context as _, bail};

fn main() -> anyhow::Result<()> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?);
    let bench_dir = manifest.join("bench-ebpf");
    println!("cargo:rerun-if-env-changed=PATH");
    if !on_path("bpf-linker") {
        bail!(
            "bpf-linker is not on PATH: the benchmark's XDP programs cannot be linked. \
             Run `cargo xtask setup` (it builds bpf-linker against the nightly \
             toolchain's own LLVM), then build again."
        );
    }
    let root_dir = bench_dir.to_str().context("bench-ebpf path is not UTF-8")?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "bench-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
}

fn on_path(program: &str) -> bool {
    env::var_os("PATH")
        .map(|paths| env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false)
}
