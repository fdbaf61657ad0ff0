//! `stickylb check` and the CLI's argument errors: no daemon, no root needed.

use std::process::Command;

const STICKYLB: &str = env!("CARGO_BIN_EXE_stickylb-under-test");

fn check(config: &str) -> (i32, String, String) {
    with_config("check", config)
}

/// `stickylb <command> -c FILE` with `config` in FILE: exit code, stdout, stderr.
fn with_config(command: &str, config: &str) -> (i32, String, String) {
    let dir = std::env::temp_dir().join(format!(
        "slb-cli-{}-{command}-{}",
        std::process::id(),
        config.len()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("stickylb.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(STICKYLB)
        .arg(command)
        .arg("-c")
        .arg(&path)
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_accepts_a_good_config() {
    let (code, out, err) = check(
        "interface = \"lo\"\n[[vip]]\nname = \"web\"\naddress = \"192.0.2.10\"\nport = 80\n\
         [[vip.backend]]\naddress = \"10.0.0.11\"\nport = 80\n",
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(": OK (1 VIPs, 1 backends, interface lo)"),
        "{out}"
    );
}

#[test]
fn check_reports_every_problem_at_once() {
    let (code, out, err) = check(
        "interface = \"nosuchif0\"\n[[vip]]\nname = \"web\"\naddress = \"192.0.2.10\"\nport = 80\n\
         table_size = 65536\n\
         [[vip.backend]]\naddress = \"10.0.0.11\"\nport = 80\n\
         [[vip.backend]]\naddress = \"10.0.0.11\"\nport = 80\n",
    );
    assert_eq!(code, 1);
    assert!(out.is_empty());
    for want in [
        "65536 is not prime",
        "duplicate backend",
        "no network interface named \"nosuchif0\"",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
}

#[test]
fn check_names_an_unknown_field_and_its_line() {
    let (code, _, err) = check("interface = \"lo\"\nintervall = 3\n");
    assert_eq!(code, 1);
    assert!(
        err.contains("unknown field `intervall`") && err.contains("line 2"),
        "{err}"
    );
}

#[test]
fn argument_errors_are_clear() {
    let out = Command::new(STICKYLB)
        .args(["lookup", "300.1.1.1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid value '300.1.1.1'"));
    let out = Command::new(STICKYLB)
        .arg("run")
        .env_remove("STICKYLB_CONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim_end(),
        "stickylb: no config file: pass -c FILE (or set STICKYLB_CONFIG)"
    );
    let out = Command::new(STICKYLB).arg("man").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(".TH stickylb"));
    let out = Command::new(STICKYLB)
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("_stickylb()"));
}

#[test]
fn commands_with_c_read_only_the_control_socket_from_the_file() {
    // Half edited (no VIPs, an unknown field): still names the daemon's
    // socket, and fails only because no daemon listens there.
    let sock = std::env::temp_dir().join(format!("slb-cli-none-{}.sock", std::process::id()));
    let (code, _, err) = with_config(
        "status",
        &format!("control_socket = \"{}\"\nbogus = 1\n", sock.display()),
    );
    assert_eq!(code, 1);
    assert!(
        err.starts_with("stickylb: cannot reach the stickylb daemon")
            && err.contains(&sock.display().to_string()),
        "{err}"
    );
    let (code, _, err) = with_config("status", "control_socket = [\n");
    assert_eq!(code, 1);
    assert!(
        err.contains("is not valid TOML") && err.contains("--socket"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}

#[test]
fn errors_are_json_under_json() {
    let sock = std::env::temp_dir().join(format!("slb-cli-json-{}.sock", std::process::id()));
    let out = Command::new(STICKYLB)
        .arg("--json")
        .arg("--socket")
        .arg(&sock)
        .arg("status")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stderr.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false, "{v}");
    let err = v["error"].as_str().unwrap();
    assert!(
        err.starts_with("cannot reach the stickylb daemon")
            && err.contains(&sock.display().to_string()),
        "{err}"
    );
    // Errors before any daemon is asked are JSON too.
    let out = Command::new(STICKYLB)
        .args(["--json", "run"])
        .env_remove("STICKYLB_CONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"ok": false, "error": "no config file: pass -c FILE (or set STICKYLB_CONFIG)"})
    );
}

#[test]
fn a_closed_stdout_is_no_error() {
    // The reader is gone before the first write, as with `stickylb man |
    // head -0`: every write fails with EPIPE.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(STICKYLB)
        .arg("man")
        .stdout(writer)
        .output()
        .unwrap();
    assert_eq!(
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).as_ref()
        ),
        (Some(0), "")
    );
}
