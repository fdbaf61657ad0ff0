//! What the configuration's unit tests share: a minimal valid file, a way to
//! vary it, and ways to read what parsing it says.

use std::path::PathBuf;

use super::{BackendConfig, Config, ConfigError};

pub(super) const MINIMAL: &str = r#"
interface = "eth0"

[[vip]]
name = "web"
address = "192.0.2.10"
port = 80

[[vip.backend]]
address = "10.0.0.11"
port = 80
"#;

/// A valid one-VIP, one-backend file with extra lines at the end of the
/// global part, the VIP table and the backend table.
pub(super) fn doc(global: &str, vip: &str, backend: &str) -> String {
    format!(
        "interface = \"eth0\"\n{global}\n\
         [[vip]]\nname = \"web\"\naddress = \"192.0.2.10\"\nport = 80\n{vip}\n\
         [[vip.backend]]\naddress = \"10.0.0.11\"\nport = 80\n{backend}\n"
    )
}

pub(super) fn parse(text: &str) -> Config {
    match Config::parse(text) {
        Ok(c) => c,
        Err(e) => panic!("expected a valid config, got: {e}"),
    }
}

pub(super) fn problems(text: &str) -> Vec<String> {
    match Config::parse(text) {
        Err(ConfigError::Invalid(p)) => p.iter().map(ToString::to_string).collect(),
        other => panic!("expected validation problems, got {other:?}"),
    }
}

pub(super) fn syntax_error(text: &str) -> String {
    match Config::parse(text) {
        Err(ConfigError::Syntax(msg)) => msg,
        other => panic!("expected a syntax error, got {other:?}"),
    }
}

/// Asserts that the only problem is one at `path` whose message contains `needle`.
#[track_caller]
pub(super) fn assert_only_problem(text: &str, path: &str, needle: &str) {
    let p = problems(text);
    assert_eq!(p.len(), 1, "expected one problem, got {p:#?}");
    assert!(
        p[0].starts_with(&format!("{path}: ")) && p[0].contains(needle),
        "expected `{path}: ...{needle}...`, got {:?}",
        p[0]
    );
}

#[track_caller]
pub(super) fn assert_validate_has(config: &Config, path: &str, needle: &str) {
    let p: Vec<String> = config.validate().iter().map(ToString::to_string).collect();
    assert!(
        p.iter()
            .any(|s| s.starts_with(&format!("{path}: ")) && s.contains(needle)),
        "expected `{path}: ...{needle}...` among {p:#?}"
    );
}

pub(super) fn backend(config: &Config) -> &BackendConfig {
    &config.vips[0].backends[0]
}

/// A scratch folder, removed when dropped.
pub(super) struct TempDir(pub(super) PathBuf);

impl TempDir {
    pub(super) fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "stickylb-config-{tag}-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
