//! Versions deployed while the pipeline runs (from the API, `weir plugin deploy` or the watched directory)
//! outlive a restart. Each successful deploy writes the component to `<dir>/current/<stage>.wasm`, and the
//! version it replaced, when that was a deployed one too, to `previous/`; a rollback (asked for, or automatic)
//! moves `previous/` back, or with none removes `current/`, which brings the configured version back. `weir
//! run` starts each stage from `current/` when there is one, so a restart never silently reverts a deploy.

use std::io;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug)]
pub struct Deployed {
    dir: PathBuf,
}

impl Deployed {
    pub fn new(dir: PathBuf) -> Self {
        Deployed { dir }
    }

    fn file(&self, which: &str, stage: &str) -> PathBuf {
        self.dir.join(which).join(format!("{stage}.wasm"))
    }

    /// The version last deployed to `stage`, if it is not the configured one.
    pub fn current(&self, stage: &str) -> Option<PathBuf> {
        let file = self.file("current", stage);
        file.is_file().then_some(file)
    }

    /// The version deployed to `stage` before the current one, if that was not the configured one.
    pub fn previous(&self, stage: &str) -> Option<PathBuf> {
        let file = self.file("previous", stage);
        file.is_file().then_some(file)
    }

    /// Records `bytes` as the version now running in `stage`.
    pub fn record_deploy(&self, stage: &str, bytes: &[u8]) -> io::Result<()> {
        let current = self.file("current", stage);
        let previous = self.file("previous", stage);
        for dir in [&current, &previous].map(|f| f.parent().expect("a file in a directory")) {
            std::fs::create_dir_all(dir)?;
        }
        if current.is_file() {
            std::fs::rename(&current, &previous)?;
        } else {
            // The version replaced is the configured one: a rollback brings it back by removing `current`.
            remove(&previous)?;
        }
        write_atomically(&current, bytes)
    }

    /// Records a rollback of `stage` to the version before its last deploy.
    pub fn record_rollback(&self, stage: &str) -> io::Result<()> {
        let current = self.file("current", stage);
        let previous = self.file("previous", stage);
        if previous.is_file() {
            std::fs::rename(&previous, &current)
        } else {
            remove(&current)
        }
    }
}

fn remove(file: &Path) -> io::Result<()> {
    match std::fs::remove_file(file) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Writes through a temporary file and a rename, so a crash leaves the old file or the new one.
fn write_atomically(file: &Path, bytes: &[u8]) -> io::Result<()> {
    let temporary = file.with_extension("wasm.partial");
    std::fs::write(&temporary, bytes)?;
    std::fs::rename(&temporary, file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deploys_and_rollbacks_are_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let deployed = Deployed::new(dir.path().to_path_buf());
        let read = |p: PathBuf| std::fs::read(p).unwrap();
        assert_eq!(deployed.current("enrich"), None);
        deployed.record_deploy("enrich", b"v2").unwrap();
        assert_eq!(read(deployed.current("enrich").unwrap()), b"v2");
        deployed.record_deploy("enrich", b"v3").unwrap();
        assert_eq!(read(deployed.current("enrich").unwrap()), b"v3");
        deployed.record_rollback("enrich").unwrap();
        assert_eq!(read(deployed.current("enrich").unwrap()), b"v2");
        // No older deployed version: the configured one is back.
        deployed.record_rollback("enrich").unwrap();
        assert_eq!(deployed.current("enrich"), None);
        deployed.record_deploy("enrich", b"v4").unwrap();
        deployed.record_rollback("enrich").unwrap();
        assert_eq!(
            deployed.current("enrich"),
            None,
            "v2 was not the previous of v4"
        );
        assert_eq!(deployed.current("filter"), None);
    }
}
