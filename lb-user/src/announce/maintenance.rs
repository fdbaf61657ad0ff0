//! Maintenance mode, kept across restarts: a file per pin path (the data
//! path a daemon serves, as its runtime record is keyed) in
//! `/run/stickylb/maintenance/`. Under /run, a reboot ends it, as it
//! ends the data path itself.

use std::{
    io,
    os::unix::fs::DirBuilderExt as _,
    path::{Path, PathBuf},
};

use crate::runtime::Record;

/// Where maintenance files live.
pub const MAINTENANCE_DIR: &str = "/run/stickylb/maintenance";

/// The maintenance state of one pin path.
#[derive(Debug)]
pub struct Maintenance {
    file: PathBuf,
    on: bool,
}

impl Maintenance {
    /// The state of `pin_path`, as an earlier daemon left it in `dir`.
    pub fn load(dir: &Path, pin_path: &Path) -> Self {
        let file = Record::path_in(dir, pin_path).with_extension("on");
        let on = file.exists();
        Self { file, on }
    }

    pub fn is_on(&self) -> bool {
        self.on
    }

    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Turns it on or off, on disk first: a state that could not be kept
    /// is refused rather than lost at the next restart.
    pub fn set(&mut self, on: bool) -> io::Result<()> {
        if on {
            if let Some(dir) = self.file.parent() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(dir)?;
            }
            std::fs::write(&self.file, b"")?;
        } else {
            match std::fs::remove_file(&self.file) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        self.on = on;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_survives_a_new_load_and_is_kept_per_pin_path() {
        struct Gone(PathBuf);
        impl Drop for Gone {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
        let dir = std::env::temp_dir().join(format!("stickylb-maint-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let _gone = Gone(dir.clone());
        let a = Path::new("/sys/fs/bpf/a");
        let mut m = Maintenance::load(&dir, a);
        assert!(!m.is_on());
        m.set(true).unwrap();
        assert!(Maintenance::load(&dir, a).is_on());
        assert!(!Maintenance::load(&dir, Path::new("/sys/fs/bpf/b")).is_on());
        m.set(false).unwrap();
        m.set(false).unwrap();
        assert!(!Maintenance::load(&dir, a).is_on());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
