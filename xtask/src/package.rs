//! `cargo xtask package`: the Debian package, target/debian/stickylb_<v>_<arch>.deb.
//!
//! The tree is staged by hand and built with `dpkg-deb --build
//! --root-owner-group` rather than with cargo-deb: what goes in is made by
//! the built binary itself (man pages, completions), the maintainer scripts
//! are stickylb's own (packaging/debian/), and every tool used (dpkg-deb,
//! dpkg-shlibdeps, gzip, md5sum) comes with dpkg-dev, which setup installs.
//! cargo-deb would be one more crate to build and pin against this
//! toolchain, and would still need the generated files staged beforehand.
//! See docs/packaging.md.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::util::{self, step};

const NAME: &str = "stickylb";
/// The crate version plus a Debian revision (a packaging-only change bumps it).
const DEBIAN_REVISION: &str = "1";
const CONFFILE: &str = "etc/stickylb/stickylb.toml";

/// Builds the package and returns its path.
pub fn build() -> Result<PathBuf> {
    step("package: stickylb in release mode (the XDP object is embedded)");
    util::cargo(&["build", "--release", "-p", "lb-user", "--bin", NAME])?;
    let target =
        PathBuf::from(std::env::var_os("CARGO_TARGET_DIR").unwrap_or_else(|| "target".into()));
    let binary = target.join("release").join(NAME);
    let out_dir = target.join("debian");
    // dpkg-shlibdeps reads debian/control in its working directory and
    // expects the binary under debian/<package>/.
    let work = out_dir.join("build");
    let root = work.join("debian").join(NAME);
    if work.exists() {
        fs::remove_dir_all(&work).with_context(|| format!("remove {}", work.display()))?;
    }
    fs::create_dir_all(&root)?;

    step("package: staging the tree");
    stage(&binary, &root)?;
    let version = format!("{}-{DEBIAN_REVISION}", env!("CARGO_PKG_VERSION"));
    let arch = util::output(Command::new("dpkg").arg("--print-architecture"))?
        .trim()
        .to_owned();
    control(&work, &root, &version, &arch)?;
    // Folders were made with the builder's umask (027 on some CI hosts):
    // dpkg-deb refuses a DEBIAN/ that is not 0755, and the installed
    // folders must be readable by all.
    folders_0755(&root)?;

    // Only this build's package is left there, so that
    // `dpkg -i target/debian/stickylb_*.deb` (docs/packaging.md) installs it.
    for old in fs::read_dir(&out_dir)? {
        let old = old?.path();
        let name = old.file_name().unwrap_or_default().to_string_lossy();
        if name.starts_with(&format!("{NAME}_")) && name.ends_with(".deb") {
            fs::remove_file(&old)?;
        }
    }
    let deb = out_dir.join(format!("{NAME}_{version}_{arch}.deb"));
    step(&format!("package: dpkg-deb --build → {}", deb.display()));
    util::run(
        Command::new("dpkg-deb")
            .args(["--build", "--root-owner-group"])
            .arg(&root)
            .arg(&deb),
    )?;
    fs::remove_dir_all(&work)?;
    Ok(fs::canonicalize(&deb)?)
}

/// Everything but DEBIAN/, with the modes the package installs.
fn stage(binary: &Path, root: &Path) -> Result<()> {
    let bin = root.join("usr/bin").join(NAME);
    copy(binary, &bin, 0o755)?;
    // The symbol table only: the embedded XDP object is data, kept whole.
    util::run(Command::new("strip").arg("--strip-unneeded").arg(&bin))?;

    copy(
        Path::new("packaging/stickylb.service"),
        &root.join("lib/systemd/system/stickylb.service"),
        0o644,
    )?;
    copy(
        Path::new("docs/stickylb.example.toml"),
        &root.join(CONFFILE),
        0o644,
    )?;

    // Man pages and completions come from the binary being packaged, so
    // they describe exactly its commands.
    let man = root.join("usr/share/man");
    util::output(Command::new(&bin).arg("man").arg("--dir").arg(&man))?;
    for section in ["man1", "man5"] {
        for page in fs::read_dir(man.join(section))? {
            let page = page?.path();
            fs::set_permissions(&page, fs::Permissions::from_mode(0o644))?;
            // -n: no name or time stamp inside, so a rebuild is the same.
            util::run(Command::new("gzip").arg("-9n").arg(&page))?;
        }
    }
    for (shell, path) in [
        ("bash", "usr/share/bash-completion/completions/stickylb"),
        ("zsh", "usr/share/zsh/vendor-completions/_stickylb"),
        ("fish", "usr/share/fish/vendor_completions.d/stickylb.fish"),
    ] {
        let text = util::output(Command::new(&bin).args(["completions", shell]))?;
        write(&root.join(path), &text, 0o644)?;
    }

    let doc = root.join("usr/share/doc").join(NAME);
    copy(Path::new("README.md"), &doc.join("README.md"), 0o644)?;
    // The README links docs/*.md, and they link each other, the example,
    // the BIRD configs, the dashboard and the alert rules: the whole folder
    // keeps those links working.
    copy_tree(Path::new("docs"), &doc.join("docs"))?;
    write(&doc.join("copyright"), COPYRIGHT, 0o644)?;
    Ok(())
}

/// DEBIAN/: control (with the computed Depends and Installed-Size),
/// conffiles, md5sums and the maintainer scripts.
fn control(work: &Path, root: &Path, version: &str, arch: &str) -> Result<()> {
    let debian = root.join("DEBIAN");
    fs::create_dir_all(&debian)?;
    write(
        &work.join("debian/control"),
        &format!("Source: {NAME}\n\nPackage: {NAME}\nArchitecture: any\n"),
        0o644,
    )?;
    let shlibs = util::output(
        Command::new("dpkg-shlibdeps")
            .arg("-O")
            .arg(format!("debian/{NAME}/usr/bin/{NAME}"))
            .current_dir(work),
    )?;
    let depends = shlibs
        .lines()
        .find_map(|l| l.strip_prefix("shlibs:Depends="))
        .context("dpkg-shlibdeps printed no shlibs:Depends")?
        .trim()
        .to_owned();

    let files = files_under(root)?;
    // As dpkg-gencontrol counts: KiB, each file rounded up, and a block
    // per directory.
    let mut kib = 0;
    for f in &files {
        kib += fs::metadata(root.join(f))?.len().div_ceil(1024);
    }
    kib += dirs_under(root)?;

    let maintainer = std::env::var("STICKYLB_MAINTAINER")
        .unwrap_or_else(|_| "stickylb developers <stickylb@localhost>".to_owned());
    write(
        &debian.join("control"),
        &format!(
            "Package: {NAME}\n\
             Version: {version}\n\
             Architecture: {arch}\n\
             Maintainer: {maintainer}\n\
             Installed-Size: {kib}\n\
             Depends: {depends}\n\
             Recommends: systemd\n\
             Section: net\n\
             Priority: optional\n\
             Description: {DESCRIPTION}"
        ),
        0o644,
    )?;
    write(&debian.join("conffiles"), &format!("/{CONFFILE}\n"), 0o644)?;

    // The conffile is not listed: dpkg keeps its own checksum of it, to
    // tell an edited file from the packaged one on upgrade.
    let summed: Vec<&String> = files.iter().filter(|f| *f != CONFFILE).collect();
    let sums = util::output(Command::new("md5sum").args(&summed).current_dir(root))?;
    write(&debian.join("md5sums"), &sums, 0o644)?;

    for script in ["postinst", "prerm", "postrm"] {
        copy(
            &Path::new("packaging/debian").join(script),
            &debian.join(script),
            0o755,
        )?;
    }
    Ok(())
}

const DESCRIPTION: &str = "\
sticky L4 load balancer on XDP
 stickylb pins every client, by IP address, to one backend of a virtual IP
 (an affinity table backed by a Maglev table) and forwards its packets in an
 XDP program: by L2 direct server return, or in IP-in-IP or GUE tunnels.
 The daemon health-checks the backends (TCP, HTTP, UDP, a command), applies
 config reloads and live changes without moving clients, serves Prometheus
 metrics, can announce the VIPs to BGP routers and share affinity with peer
 nodes. Stopping or restarting the daemon leaves the program forwarding.
 .
 This package holds the stickylb daemon and CLI, a systemd unit (not
 enabled on install), an example configuration in /etc/stickylb, man pages,
 shell completions and the documentation.
";

const COPYRIGHT: &str = "\
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: stickylb

Files: *
Copyright: the stickylb developers
License: MIT or Apache-2.0
 stickylb may be used under the terms of either license, at your option.
 .
 On Debian systems, the complete text of the Apache License, Version 2.0
 can be found in /usr/share/common-licenses/Apache-2.0.
 .
 The MIT License:
 .
 Permission is hereby granted, free of charge, to any person obtaining a
 copy of this software and associated documentation files (the
 \"Software\"), to deal in the Software without restriction, including
 without limitation the rights to use, copy, modify, merge, publish,
 distribute, sublicense, and/or sell copies of the Software, and to permit
 persons to whom the Software is furnished to do so, subject to the
 following conditions:
 .
 The above copyright notice and this permission notice shall be included
 in all copies or substantial portions of the Software.
 .
 THE SOFTWARE IS PROVIDED \"AS IS\", WITHOUT WARRANTY OF ANY KIND, EXPRESS
 OR IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF
 MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN
 NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM,
 DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR
 OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE
 USE OR OTHER DEALINGS IN THE SOFTWARE.
";

fn folders_0755(dir: &Path) -> Result<()> {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    for entry in fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            folders_0755(&entry.path())?;
        }
    }
    Ok(())
}

fn mkdirs(path: &Path) -> Result<()> {
    let parent = path.parent().context("a path in the tree")?;
    fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))
}

fn copy(from: &Path, to: &Path, mode: u32) -> Result<()> {
    mkdirs(to)?;
    fs::copy(from, to).with_context(|| format!("copy {} to {}", from.display(), to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn write(to: &Path, text: &str, mode: u32) -> Result<()> {
    mkdirs(to)?;
    fs::write(to, text).with_context(|| format!("write {}", to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    for entry in fs::read_dir(from).with_context(|| format!("read {}", from.display()))? {
        let entry = entry?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if entry.file_type()?.is_dir() {
            copy_tree(&src, &dst)?;
        } else if entry.file_type()?.is_file() {
            copy(&src, &dst, 0o644)?;
        } else {
            bail!("{}: neither a file nor a folder", src.display());
        }
    }
    Ok(())
}

/// The files under `root` (DEBIAN/ aside), relative to it, sorted.
fn files_under(root: &Path) -> Result<Vec<String>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            let rel = path.strip_prefix(root)?.to_string_lossy().into_owned();
            if rel == "DEBIAN" {
                continue;
            }
            if path.is_dir() {
                walk(root, &path, out)?;
            } else {
                out.push(rel);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(root, root, &mut out)?;
    out.sort();
    Ok(out)
}

fn dirs_under(root: &Path) -> Result<u64> {
    fn walk(dir: &Path) -> Result<u64> {
        let mut n = 1;
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            if path.is_dir() && path.file_name().is_some_and(|n| n != "DEBIAN") {
                n += walk(&path)?;
            }
        }
        Ok(n)
    }
    walk(root)
}
