//! Builds the XDP program (lb-ebpf) with the nightly toolchain and
//! bpf-linker, so that `cargo build` is the whole build and the daemon can
//! embed the object it was tested with.

use std::{env, path::PathBuf};

use anyhow::{Context as _, bail};

fn main() -> anyhow::Result<()> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest
        .parent()
        .context("lb-user has no parent folder")?
        .join("lb-ebpf");
    println!("cargo:rerun-if-env-changed=PATH");
    if !on_path("bpf-linker") {
        bail!(
            "bpf-linker is not on PATH: the XDP program cannot be linked. \
             Run `cargo xtask setup` (it builds bpf-linker against the nightly \
             toolchain's own LLVM), then build again."
        );
    }
    let root_dir = ebpf_dir.to_str().context("lb-ebpf path is not UTF-8")?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "lb-ebpf",
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
