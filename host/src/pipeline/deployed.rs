//! Versions deployed while the pipeline runs (from the API, `weir plugin deploy` or the watched directory)
//! outlive a restart. Each successful deploy writes the component to `<dir>/current/<stage>.wasm`, and the
//! version it replaced, when that was a deployed one too, to `previous/`; a rollback (asked for, or automatic)
//! moves `previous/` back, or with none removes `current/`, which brings the configured version back. `weir
//! run` starts each stage from `current/` when there is one, so a restart never silently reverts a deploy.
//!
//! Beside each deployed version, `current/<stage>.configured` holds the SHA-256 of the configured plugin file
//! it was deployed over. When that file has changed since (the operator pointed `plugin =` elsewhere or put a
//! new build there), the configuration is the newer word: the stage starts on it, and the deploys of that
//! stage are forgotten, with a warning.
//!
//! `refused/<stage>` names the other hosts' deploy this host refused last, and `unannounced/<stage>.json`
//! the deploy or rollback made here that NATS has not taken yet (both for `pipeline::cluster`).

use std::io;
use std::path::{Path, PathBuf};

use crate::bus::deploys::Record;

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

    /// Where the version last deployed to `stage` is kept (if there is one).
    pub fn current_file(&self, stage: &str) -> PathBuf {
        self.file("current", stage)
    }

    /// The version last deployed to `stage`, if it is not the configured one and was deployed over the
    /// configured plugin as `configured` holds it now.
    pub fn current(&self, stage: &str, configured: &Path) -> Option<PathBuf> {
        let file = self.file("current", stage);
        if !file.is_file() {
            return None;
        }
        // Deploys recorded before the configured plugin was noted carry on as they did.
        let Ok(noted) = std::fs::read_to_string(self.configured_note(stage)) else {
            return Some(file);
        };
        if fingerprint(configured).is_some_and(|now| now != noted.trim()) {
            tracing::warn!(
                %stage,
                configured = %configured.display(),
                "the configured plugin changed since this stage's last deploy: starting on it, and forgetting \
                 the deployed versions"
            );
            if let Err(e) = self.forget(stage) {
                tracing::warn!(%stage, "cannot forget the deployed versions: {e}");
            }
            return None;
        }
        Some(file)
    }

    fn configured_note(&self, stage: &str) -> PathBuf {
        self.dir.join("current").join(format!("{stage}.configured"))
    }

    /// The version deployed to `stage` before the current one, if that was not the configured one.
    pub fn previous(&self, stage: &str) -> Option<PathBuf> {
        let file = self.file("previous", stage);
        file.is_file().then_some(file)
    }

    /// Records `bytes` as the version now running in `stage`, deployed over the plugin `configured`.
    pub fn record_deploy(&self, stage: &str, bytes: &[u8], configured: &Path) -> io::Result<()> {
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
        if let Some(hash) = fingerprint(configured) {
            write_atomically(&self.configured_note(stage), hash.as_bytes())?;
        }
        write_atomically(&current, bytes)
    }

    /// Forgets the versions deployed to `stage`: it starts on the configured one.
    pub fn forget(&self, stage: &str) -> io::Result<()> {
        for file in [
            self.file("current", stage),
            self.file("previous", stage),
            self.configured_note(stage),
        ] {
            remove(&file)?;
        }
        Ok(())
    }

    /// Remembers that this host refused the deploy `id` of the pipeline's other hosts to `stage` (see
    /// `pipeline::cluster`): a restart does not start on it.
    pub fn record_refusal(&self, stage: &str, id: &str) -> io::Result<()> {
        let file = self.refusal(stage);
        std::fs::create_dir_all(file.parent().expect("a file in a directory"))?;
        write_atomically(&file, id.as_bytes())
    }

    /// The deploy of the other hosts this host last refused for `stage`.
    pub fn refused(&self, stage: &str) -> Option<String> {
        std::fs::read_to_string(self.refusal(stage))
            .ok()
            .map(|id| id.trim().to_string())
    }

    fn refusal(&self, stage: &str) -> PathBuf {
        self.dir.join("refused").join(stage)
    }

    /// Keeps the cluster's record of a deploy or rollback of `stage` made here until NATS has taken it
    /// (`pipeline::cluster`): one made while NATS is away, on a host that stops before it is back, is
    /// announced at the next start rather than lost.
    pub fn record_unannounced(&self, stage: &str, record: &Record) -> io::Result<()> {
        let file = self.unannounced_file(stage);
        std::fs::create_dir_all(file.parent().expect("a file in a directory"))?;
        let json = serde_json::to_vec(record).map_err(io::Error::other)?;
        write_atomically(&file, &json)
    }

    /// The deploy or rollback of `stage` made here that NATS has not taken yet. One that cannot be read
    /// (a file cut short) is none: the host then starts on the cluster's record, as before it was kept.
    pub fn unannounced(&self, stage: &str) -> Option<Record> {
        let file = self.unannounced_file(stage);
        let bytes = std::fs::read(&file).ok()?;
        serde_json::from_slice(&bytes)
            .inspect_err(|e| tracing::warn!(file = %file.display(), "passed over: {e}"))
            .ok()
    }

    /// NATS took the record `id` of `stage` (or it no longer stands): no longer kept, unless a later one
    /// replaced it meanwhile.
    pub fn announced(&self, stage: &str, id: &str) -> io::Result<()> {
        match self.unannounced(stage) {
            Some(kept) if kept.id() != id => Ok(()),
            _ => remove(&self.unannounced_file(stage)),
        }
    }

    fn unannounced_file(&self, stage: &str) -> PathBuf {
        self.dir.join("unannounced").join(format!("{stage}.json"))
    }

    /// Records a rollback of `stage` to the version before its last deploy.
    pub fn record_rollback(&self, stage: &str) -> io::Result<()> {
        let current = self.file("current", stage);
        let previous = self.file("previous", stage);
        if previous.is_file() {
            std::fs::rename(&previous, &current)
        } else {
            remove(&self.configured_note(stage))?;
            remove(&current)
        }
    }
}

/// The SHA-256 of a plugin file, in hex; `None` when it cannot be read.
pub(crate) fn fingerprint(file: &Path) -> Option<String> {
    std::fs::read(file)
        .ok()
        .map(|bytes| crate::runtime::component_sha256(&bytes))
}

fn remove(file: &Path) -> io::Result<()> {
    match std::fs::remove_file(file) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Writes through a temporary file and a rename, so a crash leaves the old file or the new one.
fn write_atomically(file: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut temporary = file.as_os_str().to_owned();
    temporary.push(".partial");
    let temporary = PathBuf::from(temporary);
    std::fs::write(&temporary, bytes)?;
    std::fs::rename(&temporary, file)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record of deploys in a temporary directory, and a configured plugin file holding `v1`.
    fn deployed_over_v1() -> (tempfile::TempDir, Deployed, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let deployed = Deployed::new(dir.path().join("deployed"));
        let configured = dir.path().join("enrich.wasm");
        std::fs::write(&configured, b"v1").unwrap();
        (dir, deployed, configured)
    }

    #[test]
    fn deploys_and_rollbacks_are_remembered() {
        let (_dir, deployed, configured) = deployed_over_v1();
        let current = |stage| deployed.current(stage, &configured);
        let read = |p: PathBuf| std::fs::read(p).unwrap();
        assert_eq!(current("enrich"), None);
        deployed
            .record_deploy("enrich", b"v2", &configured)
            .unwrap();
        assert_eq!(read(current("enrich").unwrap()), b"v2");
        deployed
            .record_deploy("enrich", b"v3", &configured)
            .unwrap();
        assert_eq!(read(current("enrich").unwrap()), b"v3");
        deployed.record_rollback("enrich").unwrap();
        assert_eq!(read(current("enrich").unwrap()), b"v2");
        // No older deployed version: the configured one is back.
        deployed.record_rollback("enrich").unwrap();
        assert_eq!(current("enrich"), None);
        deployed
            .record_deploy("enrich", b"v4", &configured)
            .unwrap();
        deployed.record_rollback("enrich").unwrap();
        assert_eq!(current("enrich"), None, "v2 was not the previous of v4");
        assert_eq!(current("filter"), None);
    }

    #[test]
    fn a_record_waits_until_announced() {
        let (_dir, deployed, _) = deployed_over_v1();
        let record = |at_ms| Record {
            sha256: "ab".into(),
            plugin: "enrich@0.2.0".into(),
            configured: None,
            replaced: Some("cd".into()),
            rollback: false,
            host: "edge-1".into(),
            at_ms,
        };
        assert_eq!(deployed.unannounced("enrich"), None);
        deployed.record_unannounced("enrich", &record(1)).unwrap();
        deployed.record_unannounced("enrich", &record(2)).unwrap();
        assert_eq!(deployed.unannounced("enrich"), Some(record(2)));
        // An earlier record taken leaves the later one waiting.
        deployed.announced("enrich", &record(1).id()).unwrap();
        assert_eq!(deployed.unannounced("enrich"), Some(record(2)));
        deployed.announced("enrich", &record(2).id()).unwrap();
        assert_eq!(deployed.unannounced("enrich"), None);
        deployed.announced("enrich", &record(2).id()).unwrap();
    }

    /// A deploy recorded before the configured plugin was noted (by an older Weir) is still started.
    #[test]
    fn a_deploy_without_a_note_carries_on() {
        let (_dir, deployed, configured) = deployed_over_v1();
        deployed
            .record_deploy("enrich", b"v2", &configured)
            .unwrap();
        std::fs::remove_file(deployed.configured_note("enrich")).unwrap();
        std::fs::write(&configured, b"v5").unwrap();
        assert!(deployed.current("enrich", &configured).is_some());
    }

    /// A configured plugin that changed after a deploy wins over it, and the deploys are forgotten.
    #[test]
    fn a_changed_configuration_wins_over_earlier_deploys() {
        let (_dir, deployed, configured) = deployed_over_v1();
        deployed
            .record_deploy("enrich", b"v2", &configured)
            .unwrap();
        deployed
            .record_deploy("enrich", b"v3", &configured)
            .unwrap();
        assert!(deployed.current("enrich", &configured).is_some());
        std::fs::write(&configured, b"v5, configured").unwrap();
        assert_eq!(deployed.current("enrich", &configured), None);
        assert_eq!(deployed.previous("enrich"), None);
        // Forgotten for good, not only while the file differs.
        std::fs::write(&configured, b"v1").unwrap();
        assert_eq!(deployed.current("enrich", &configured), None);
    }
}
