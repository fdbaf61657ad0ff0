//! What `validate` cannot know: whether this machine can run the file.

use std::path::Path;

use super::{
    Config, Problem, Problems,
    validate::{MAX_INTERFACE_LEN, is_valid_interface_name},
};
use crate::netdev;

impl Config {
    /// Checks against the machine this runs on: what `validate` cannot know.
    pub fn check_environment(&self) -> Vec<Problem> {
        let mut out = Problems::default();
        // An invalid name is already reported by validate(), and must not be
        // joined to a path (it may contain '/').
        if is_valid_interface_name(&self.interface)
            && self.interface.len() <= MAX_INTERFACE_LEN
            && netdev::ifindex(&self.interface).is_none()
        {
            out.push(
                "interface",
                format!(
                    "no network interface named {:?} on this machine (`ip link` lists them)",
                    self.interface
                ),
            );
        }
        if let Ok(meta) = std::fs::symlink_metadata(&self.control_socket)
            && !std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type())
        {
            out.push(
                "control_socket",
                format!(
                    "{} exists and is not a socket ({}); the daemon replaces only a stale \
                     socket, so choose another path",
                    self.control_socket.display(),
                    if meta.is_dir() {
                        "a directory"
                    } else {
                        "a file"
                    }
                ),
            );
        }
        if let Some(parent) = self.control_socket.parent().filter(|p| p.is_absolute()) {
            // The daemon creates missing directories, so the question is
            // whether the nearest existing ancestor lets it.
            let existing = parent.ancestors().find(|a| a.exists());
            match existing {
                Some(dir) if !dir.is_dir() => out.push(
                    "control_socket",
                    format!("{} is not a directory", dir.display()),
                ),
                Some(dir) if !is_writable_dir(dir) => out.push(
                    "control_socket",
                    if dir == parent {
                        format!(
                            "cannot create the socket in {}: no write access",
                            dir.display()
                        )
                    } else {
                        format!(
                            "cannot create {}: no write access to {}",
                            parent.display(),
                            dir.display()
                        )
                    },
                ),
                _ => {}
            }
        }
        self.check_socket_folder(&mut out);
        out.0
    }

    /// The daemon refuses a socket folder others could replace the socket
    /// in (see `control::bind`); `check` says so first.
    fn check_socket_folder(&self, out: &mut Problems) {
        if let Some(parent) = self.control_socket.parent().filter(|p| p.is_dir())
            && let Some(why) = crate::control::unsafe_socket_dir(parent)
        {
            out.push("control_socket", why);
        }
    }
}

fn is_writable_dir(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt as _;
    let Ok(c_path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // access(2) rather than reading mode bits: it accounts for root, ACLs
    // and read-only mounts the way creating the socket will.
    // SAFETY: c_path is a valid NUL-terminated string that outlives the call.
    unsafe { libc::access(c_path.as_ptr(), libc::W_OK | libc::X_OK) == 0 }
}

#[cfg(test)]
mod tests {
    use crate::config::testutil::*;

    #[test]
    fn environment_checks_interface_and_socket_directory() {
        let dir = TempDir::new("env");
        let mut c = parse(MINIMAL);
        c.interface = "lo".into();
        c.control_socket = dir.0.join("not/yet/there.sock");
        assert_eq!(c.check_environment(), vec![]);

        c.interface = "nosuchnic0".into();
        let file = dir.0.join("file");
        std::fs::write(&file, "").unwrap();
        c.control_socket = file.join("s.sock");
        let p: Vec<String> = c
            .check_environment()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(p.len(), 2, "{p:#?}");
        assert!(p[0].starts_with("interface: no network interface named \"nosuchnic0\""));
        assert!(p[1].starts_with("control_socket: ") && p[1].ends_with("is not a directory"));

        // A file or folder where the socket would go is not replaced.
        c.interface = "lo".into();
        for (path, kind) in [(file.clone(), "a file"), (dir.0.clone(), "a directory")] {
            c.control_socket = path;
            let p: Vec<String> = c
                .check_environment()
                .iter()
                .map(ToString::to_string)
                .collect();
            assert_eq!(p.len(), 1, "{p:#?}");
            assert!(
                p[0].contains(&format!("exists and is not a socket ({kind})")),
                "{p:?}"
            );
        }
    }

    #[test]
    fn a_socket_folder_others_can_write_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = TempDir::new("env-sockdir");
        let mut c = parse(MINIMAL);
        c.interface = "lo".into();
        c.control_socket = dir.0.join("s.sock");
        for (mode, refused) in [
            (0o755, false),
            (0o775, true),
            (0o777, true),
            (0o1777, false),
        ] {
            std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(mode)).unwrap();
            let p = c.check_environment();
            assert_eq!(p.len(), usize::from(refused), "mode {mode:o}: {p:?}");
            if refused {
                assert!(
                    p[0].message.contains("writable by others")
                        && p[0].message.contains("chmod go-w"),
                    "{p:?}"
                );
            }
        }
    }
}
