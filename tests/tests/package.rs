//! The Debian package (`cargo xtask package`), installed on this machine and
//! removed again: its contents against the CLI's command tree, the installed
//! binary, man pages and example config, that installing starts nothing, and
//! that remove and purge leave what docs/packaging.md says. Every shell block
//! of docs/packaging.md is run here, exactly as written.
//!
//! `cargo xtask test` builds the package first and passes its path in
//! STICKYLB_DEB. The test needs root (dpkg) and never skips.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use stickylb_tests::{
    daemon::PinGuard,
    docblocks,
    netns::{ChildGuard, Netns, wait_for},
    require_root,
};

const GUIDE: &str = "docs/packaging.md";
const CONFFILE: &str = "/etc/stickylb/stickylb.toml";
const DEFAULT_PIN: &str = "/sys/fs/bpf/stickylb";
const DEFAULT_SOCKET: &str = "/run/stickylb/stickylb.sock";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the workspace")
        .to_owned()
}

/// Runs a command; (success, stdout, stderr).
fn run(cmd: &mut Command) -> (bool, String, String) {
    let shown = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{shown}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs a command that must succeed; its stdout.
fn ok(cmd: &mut Command) -> String {
    let shown = format!("{cmd:?}");
    let (success, out, err) = run(cmd);
    assert!(success, "{shown} failed:\n{out}\n{err}");
    out
}

/// A guide block, run by `sh -e` in the workspace root (as an operator in a
/// checkout would), optionally inside a network namespace.
fn block(b: &docblocks::Block, netns: Option<&Netns>) -> (bool, String, String) {
    let mut cmd = match netns {
        Some(ns) => ns.command("sh"),
        None => Command::new("sh"),
    };
    cmd.arg("-ec").arg(&b.text).current_dir(workspace());
    let t = Instant::now();
    let mut r = run(&mut cmd);
    // Another installer (apt on a fresh machine) holding dpkg's lock: dpkg
    // then changes nothing and says so, so the block is run again once the
    // lock is free, as `apt-get -o DPkg::Lock::Timeout` would wait.
    while !r.0 && r.2.contains("dpkg frontend lock") && t.elapsed() < Duration::from_secs(300) {
        eprintln!(
            "{GUIDE}:{}: dpkg is locked by another process; waiting",
            b.line
        );
        std::thread::sleep(Duration::from_secs(1));
        r = run(&mut cmd);
    }
    eprintln!(
        "{GUIDE}:{} ({}, {:.1?}): {}{}",
        b.line,
        b.role,
        t.elapsed(),
        b.text.trim(),
        if r.0 { "" } else { "  -> FAILED" }
    );
    r
}

fn blocks_ok(blocks: &[docblocks::Block], role: &str, netns: Option<&Netns>) -> String {
    let mut all = String::new();
    for b in docblocks::of_role(blocks, role).unwrap() {
        let (success, out, err) = block(b, netns);
        assert!(
            success,
            "{GUIDE}:{}: the `{role}` block failed:\n{}\nstdout:\n{out}\nstderr:\n{err}",
            b.line, b.text
        );
        all.push_str(&out);
        all.push_str(&err);
    }
    all
}

/// dpkg's idea of the package: `None` when it knows none.
fn status() -> Option<String> {
    let (success, out, _) =
        run(Command::new("dpkg-query").args(["-W", "-f=${Status}", "stickylb"]));
    (success && !out.contains("not-installed")).then_some(out)
}

/// Purges the package on drop, so a failing test leaves nothing installed.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        if status().is_some() {
            let (success, out, err) = run(Command::new("dpkg").args(["--purge", "stickylb"]));
            if !success {
                eprintln!("cleanup: dpkg --purge stickylb failed:\n{out}\n{err}");
            }
        }
    }
}

/// The man pages the CLI's command tree calls for: stickylb.1 and one per
/// subcommand at any depth, named as man(1) finds them (clap's `help` has
/// none).
fn command_pages(cmd: &clap::Command, prefix: &str, out: &mut BTreeSet<String>) {
    let name = if prefix.is_empty() {
        cmd.get_name().to_owned()
    } else {
        format!("{prefix}-{}", cmd.get_name())
    };
    for sub in cmd.get_subcommands() {
        if sub.get_name() != "help" && !sub.is_hide_set() {
            command_pages(sub, &name, out);
        }
    }
    out.insert(format!("usr/share/man/man1/{name}.1.gz"));
}

/// The processes running the file at `exe` itself (by inode: a process
/// in a container of another test may run its own /usr/bin/stickylb).
fn processes_running(exe: &Path) -> Vec<u32> {
    use std::os::unix::fs::MetadataExt as _;
    let want = std::fs::metadata(exe).unwrap();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if std::fs::metadata(entry.path().join("exe"))
            .is_ok_and(|m| (m.dev(), m.ino()) == (want.dev(), want.ino()))
        {
            pids.push(pid);
        }
    }
    pids
}

#[test]
fn the_package_installs_runs_and_leaves_only_its_config_behind() {
    require_root();
    let started = Instant::now();
    let deb = std::env::var_os("STICKYLB_DEB")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            panic!(
                "STICKYLB_DEB is not set: this test installs the package built by `cargo xtask \
             package`. Run `cargo xtask test`, or `cargo xtask package` and then \
             `STICKYLB_DEB=$PWD/target/debian/stickylb_<version>_<arch>.deb cargo test -p \
             stickylb-tests --test package -- --nocapture` as root"
            )
        });
    assert!(
        deb.is_file(),
        "STICKYLB_DEB={}: no such file; build it with `cargo xtask package`",
        deb.display()
    );
    // Another stickylb on this machine is not ours to remove, and our
    // `dpkg -r` would unload whatever is pinned at the default path.
    if let Some(s) = status() {
        panic!(
            "a stickylb package is installed already ({s}); this test installs and purges \
             its own, so it will not touch that one: remove it (`dpkg --purge stickylb`) \
             or run the test on another machine"
        );
    }
    for leftover in [
        "/usr/bin/stickylb",
        "/etc/stickylb",
        DEFAULT_PIN,
        DEFAULT_SOCKET,
    ] {
        assert!(
            !Path::new(leftover).exists(),
            "{leftover} exists though no stickylb package is installed: this test's \
             `dpkg -r` would take it down (or it is another install's); remove it first"
        );
    }
    let blocks = docblocks::load(GUIDE).unwrap();

    // docs/packaging.md's build prints the package's path: the one given.
    let built = blocks_ok(&blocks, "build", None);
    let printed = built
        .lines()
        .rev()
        .find(|l| l.ends_with(".deb"))
        .unwrap_or_else(|| panic!("`cargo xtask package` printed no .deb path:\n{built}"));
    assert_eq!(
        std::fs::canonicalize(printed.trim()).unwrap(),
        std::fs::canonicalize(&deb).unwrap(),
        "docs/packaging.md's build made another package than STICKYLB_DEB"
    );
    eprintln!("built (or found fresh) in {:.1?}", started.elapsed());
    let t0 = Instant::now();

    // --- the package as built ---------------------------------------------
    let version = env!("CARGO_PKG_VERSION");
    let info = ok(Command::new("dpkg-deb").arg("--info").arg(&deb));
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.trim().strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("no {name} in the control file:\n{info}"))
            .to_owned()
    };
    assert_eq!(field("Package"), "stickylb");
    assert_eq!(field("Version"), format!("{version}-1"));
    assert_eq!(field("Section"), "net");
    assert!(field("Depends").contains("libc6 (>= "), "{info}");
    assert!(
        field("Installed-Size").parse::<u64>().unwrap() > 1000,
        "{info}"
    );
    assert!(field("Description").contains("load balancer"), "{info}");
    for member in ["conffiles", "md5sums", "postinst", "prerm", "postrm"] {
        assert!(
            info.contains(&format!(" {member} ")),
            "no DEBIAN/{member}:\n{info}"
        );
    }
    let conffiles = ok(Command::new("dpkg-deb")
        .arg("--info")
        .arg(&deb)
        .arg("conffiles"));
    assert_eq!(conffiles.trim(), CONFFILE);

    let listing = ok(Command::new("dpkg-deb").arg("--contents").arg(&deb));
    let mut files = BTreeSet::new();
    let mut dirs = BTreeSet::new();
    for line in listing.lines() {
        let mode = line
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned();
        let owner = line.split_whitespace().nth(1).unwrap_or_default();
        assert_eq!(owner, "root/root", "{line}");
        let path = line.rsplit(' ').next().unwrap().trim_start_matches("./");
        if mode.starts_with('d') {
            dirs.insert(path.trim_end_matches('/').to_owned());
        } else {
            assert!(mode.starts_with('-'), "only files and folders: {line}");
            files.insert(path.to_owned());
            let want = if path == "usr/bin/stickylb" {
                "-rwxr-xr-x"
            } else {
                "-rw-r--r--"
            };
            assert_eq!(mode, want, "{line}");
        }
    }
    let mut want: BTreeSet<String> = [
        "usr/bin/stickylb",
        "lib/systemd/system/stickylb.service",
        "etc/stickylb/stickylb.toml",
        "usr/share/man/man5/stickylb.toml.5.gz",
        "usr/share/bash-completion/completions/stickylb",
        "usr/share/zsh/vendor-completions/_stickylb",
        "usr/share/fish/vendor_completions.d/stickylb.fish",
        "usr/share/doc/stickylb/README.md",
        "usr/share/doc/stickylb/copyright",
        "usr/share/doc/stickylb/docs/config.md",
        "usr/share/doc/stickylb/docs/packaging.md",
        "usr/share/doc/stickylb/docs/stickylb.example.toml",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    let mut pages = BTreeSet::new();
    command_pages(&lb_user::cli::command(), "", &mut pages);
    assert!(pages.contains("usr/share/man/man1/stickylb-backend-add.1.gz"));
    want.extend(pages.iter().cloned());
    let missing: Vec<&String> = want.difference(&files).collect();
    assert!(
        missing.is_empty(),
        "not in the package: {missing:?}\n{listing}"
    );
    // No page for a command that is not there.
    let stray: Vec<&String> = files
        .iter()
        .filter(|f| f.starts_with("usr/share/man/man1/") && !pages.contains(*f))
        .collect();
    assert!(stray.is_empty(), "man pages of no command: {stray:?}");
    eprintln!(
        "package: {} files, {} man1 pages, one per command of the CLI ({:.1?})",
        files.len(),
        pages.len(),
        t0.elapsed()
    );

    // --- installed ---------------------------------------------------------
    let guard = Installed;
    let installed = blocks_ok(&blocks, "install", None);
    assert!(
        status().is_some_and(|s| s == "install ok installed"),
        "{installed}"
    );
    for f in &files {
        assert!(Path::new("/").join(f).is_file(), "/{f} not installed");
    }
    assert_eq!(
        std::fs::read_to_string(CONFFILE).unwrap(),
        std::fs::read_to_string(workspace().join("docs/stickylb.example.toml")).unwrap()
    );

    let out = blocks_ok(&blocks, "installed", None);
    assert!(
        out.lines().any(|l| l == format!("stickylb {version}")),
        "the installed binary is not version {version}:\n{out}"
    );
    for page in [
        "/usr/share/man/man1/stickylb-run.1.gz",
        "/usr/share/man/man5/stickylb.toml.5.gz",
    ] {
        assert!(
            out.lines().any(|l| l == page),
            "man -w did not find {page}:\n{out}"
        );
    }
    let unit_line = out
        .lines()
        .find(|l| l.starts_with("stickylb.service"))
        .unwrap_or_else(|| panic!("no unit in list-unit-files:\n{out}"));
    assert_eq!(
        unit_line.split_whitespace().nth(1),
        Some("disabled"),
        "installing enabled the service: {unit_line}"
    );
    let wants: Vec<String> = std::fs::read_dir("/etc/systemd/system")
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().join("stickylb.service").exists())
                .map(|e| e.path().display().to_string())
                .collect()
        })
        .unwrap_or_default();
    assert!(wants.is_empty(), "enabled by {wants:?}");
    // Not started: no daemon, nothing pinned, no control socket.
    assert_eq!(
        processes_running(Path::new("/usr/bin/stickylb")),
        Vec::<u32>::new()
    );
    assert!(
        !Path::new(DEFAULT_PIN).exists(),
        "the install loaded the program"
    );
    assert!(!Path::new(DEFAULT_SOCKET).exists());

    // The config page renders without a complaint from groff.
    let (_, _, warnings) = run(Command::new("man")
        .args(["--warnings", "-l", "/usr/share/man/man5/stickylb.toml.5.gz"])
        .env("MANWIDTH", "80")
        .stdout(Stdio::null()));
    assert_eq!(warnings.trim(), "", "groff's warnings on stickylb.toml(5)");

    // The installed example names eth0: where there is none, check says so;
    // in a namespace that has one, it passes.
    let ns = Netns::new(&format!("pkg-{}", std::process::id())).unwrap();
    let lb = docblocks::of_role(&blocks, "lb").unwrap();
    let (success, _, err) = block(lb[0], Some(&ns));
    assert!(
        !success && err.contains("no network interface named \"eth0\""),
        "check passed without an eth0: {err}"
    );
    ns.ip(&[
        "link",
        "add",
        "eth0",
        "type",
        "veth",
        "peer",
        "name",
        "eth0-peer",
    ])
    .unwrap();
    let checked = blocks_ok(&blocks, "lb", Some(&ns));
    assert!(
        checked.contains(&format!(
            "{CONFFILE}: OK (2 VIPs, 5 backends, interface eth0)"
        )),
        "{checked}"
    );

    // --- a running load balancer: kept by an upgrade, taken down by dpkg -r
    // The installed example, run as the unit runs it, in the namespace (its
    // pins in the root bpffs, where `unload` looks: nsenter keeps the mount
    // namespace). Nothing else may use the default paths: refused above.
    let pins = PinGuard(PathBuf::from(DEFAULT_PIN));
    let log_path = std::env::temp_dir().join(format!("pkg-daemon-{}.log", std::process::id()));
    let log = std::fs::File::create(&log_path).unwrap();
    let mut daemon = ChildGuard(
        ns.command("/usr/bin/stickylb")
            .args(["run", "-c", CONFFILE])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let log_text = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let link = Path::new(DEFAULT_PIN).join("link");
    assert!(
        wait_for(Duration::from_secs(15), || link.exists()
            && Path::new(DEFAULT_SOCKET).exists()),
        "the installed daemon did not come up:\n{}",
        log_text()
    );
    let xdp_on = || ns.ip(&["link", "show", "eth0"]).unwrap().contains("xdp");
    assert!(xdp_on(), "no XDP program on eth0:\n{}", log_text());
    let pid = daemon.pid();

    // Reinstalling is an upgrade to dpkg (prerm upgrade, postinst configure
    // with the old version): the daemon, started by hand, is not touched.
    let upgraded = blocks_ok(&blocks, "upgrade", None);
    assert!(
        status().is_some_and(|s| s == "install ok installed"),
        "{upgraded}"
    );
    assert!(
        daemon.exited().is_none(),
        "the upgrade stopped the daemon:\n{}",
        log_text()
    );
    assert!(
        link.exists() && xdp_on(),
        "the upgrade took the data path down"
    );
    ok(Command::new("/usr/bin/stickylb").args(["--socket", DEFAULT_SOCKET, "status"]));

    // --- removed: the data path down, all but the conffile gone ------------
    let removed = blocks_ok(&blocks, "remove", None);
    assert!(
        removed.contains(&format!("stopped the daemon (pid {pid})")),
        "the prerm did not stop the daemon with `stickylb unload`:\n{removed}"
    );
    assert!(
        wait_for(Duration::from_secs(5), || daemon.exited().is_some()),
        "the daemon still runs after dpkg -r"
    );
    assert!(
        !Path::new(DEFAULT_PIN).exists(),
        "dpkg -r left the pins:\n{removed}"
    );
    assert!(
        !xdp_on(),
        "dpkg -r left the XDP program attached:\n{removed}"
    );
    assert!(
        !Path::new(DEFAULT_SOCKET).exists(),
        "dpkg -r left the control socket"
    );
    drop(daemon);
    drop(pins);
    let _ = std::fs::remove_file(&log_path);
    assert_eq!(status().as_deref(), Some("deinstall ok config-files"));
    let left: Vec<&String> = files
        .iter()
        .filter(|f| Path::new("/").join(f).exists() && format!("/{f}") != CONFFILE)
        .collect();
    assert!(left.is_empty(), "dpkg -r left {left:?}");
    assert!(Path::new(CONFFILE).is_file(), "dpkg -r removed the config");
    // A folder only the package had is gone too.
    assert!(dirs.contains("usr/share/doc/stickylb"));
    assert!(
        !Path::new("/usr/share/doc/stickylb").exists(),
        "dpkg -r left /usr/share/doc/stickylb"
    );

    // --- purged: nothing left ----------------------------------------------
    blocks_ok(&blocks, "purge", None);
    assert_eq!(status(), None);
    assert!(
        !Path::new("/etc/stickylb").exists(),
        "purge left /etc/stickylb"
    );
    let left: Vec<&String> = files
        .iter()
        .filter(|f| Path::new("/").join(f).exists())
        .collect();
    assert!(left.is_empty(), "purge left {left:?}");
    drop(guard);
    eprintln!("install to purge: {:.1?}", t0.elapsed());
}
