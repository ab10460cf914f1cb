//! Deploys and rollbacks reach every host of a pipeline. A deploy from the API goes to one host (whichever
//! the load balancer picks), a file in the watched directory to the host that watches it; the other hosts
//! sharing the stream follow through the cluster's record (`bus::deploys`):
//!
//! - [`announce`]: each deploy or rollback applied here (from the API, the CLI, the watched directory, or the
//!   error-rate watch) is put in the record, off the pipeline thread.
//! - [`follow`]: every host watches the record and brings each stage to it the way a deploy made here goes
//!   (compile, contract, self-test on its own recent events, swap between batches, state handed over), or
//!   by a rollback when the record rolls back the version the host runs. A version that fails its self-test
//!   on a host is not swapped in there: that host carries on with what it runs, and says so.
//! - [`prepare_start`]: before the plugins start, the host's own record of deploys (`plugins.deployed_dir`)
//!   is brought to the cluster's, so a new host (a pod rescheduled with an empty disk) starts on the version
//!   the others run rather than swap to it after its first batches.
//!
//! A host configured with another plugin file for a stage than the one a deploy was made over does not
//! follow that deploy: as at a restart, its configuration is the newer word (a new build rolled out host by
//! host leaves the older deploys behind).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use futures::StreamExt;

use super::deployed::fingerprint;
use super::shared::Shared;
use crate::bus::deploys::{Deploys, Record};
use crate::config::Config;
use crate::runtime::Loader;

/// A deploy or rollback applied on this host, for the others to follow.
#[derive(Debug)]
pub enum Announcement {
    Deployed {
        stage: String,
        plugin: String,
        sha256: String,
        /// The version it replaced.
        replaced: String,
        component: Bytes,
        /// The stage's configured plugin file.
        configured: PathBuf,
    },
    RolledBack {
        stage: String,
        /// The version now running.
        plugin: String,
        sha256: String,
        /// The version rolled back from.
        from: String,
        configured: PathBuf,
    },
}

/// Puts each announcement in the cluster's record, until the pipeline drops its sender.
pub async fn announce(
    deploys: Deploys,
    host: String,
    mut announcements: tokio::sync::mpsc::UnboundedReceiver<Announcement>,
) {
    while let Some(announcement) = announcements.recv().await {
        let (stage, record, component) = record_of(announcement, &host).await;
        match deploys.put(&stage, &record, component.as_deref()).await {
            Ok(()) => {
                tracing::info!(%stage, plugin = %record.plugin, "the pipeline's other hosts follow")
            }
            Err(e) => tracing::warn!(
                %stage,
                plugin = %record.plugin,
                "applied on this host only, the other hosts cannot hear of it: {e:#}"
            ),
        }
    }
}

async fn record_of(announcement: Announcement, host: &str) -> (String, Record, Option<Bytes>) {
    let (stage, plugin, sha256, replaced, rollback, component, configured) = match announcement {
        Announcement::Deployed {
            stage,
            plugin,
            sha256,
            replaced,
            component,
            configured,
        } => (
            stage,
            plugin,
            sha256,
            replaced,
            false,
            Some(component),
            configured,
        ),
        Announcement::RolledBack {
            stage,
            plugin,
            sha256,
            from,
            configured,
        } => (stage, plugin, sha256, from, true, None, configured),
    };
    let record = Record {
        sha256,
        plugin,
        configured: hash(configured).await,
        replaced: Some(replaced),
        rollback,
        host: host.to_string(),
        at_ms: chrono::Utc::now().timestamp_millis(),
    };
    (stage, record, component)
}

/// [`fingerprint`], off the async threads (a Python component is tens of MB).
async fn hash(file: PathBuf) -> Option<String> {
    tokio::task::spawn_blocking(move || fingerprint(&file))
        .await
        .ok()
        .flatten()
}

/// Watches the cluster's record and brings each stage to it, until `stop`. `configured` holds each stage's
/// configured plugin file.
pub async fn follow(
    deploys: Deploys,
    shared: Arc<Shared>,
    loader: Loader,
    configured: BTreeMap<String, PathBuf>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    // The revision of each stage's record last handled: a watch opened again (after NATS went away)
    // delivers every record again, and a version refused here is not tried again until it changes.
    let mut handled: BTreeMap<String, u64> = BTreeMap::new();
    loop {
        match deploys.watch().await {
            Ok(records) => {
                let mut records = std::pin::pin!(records);
                loop {
                    let next = tokio::select! {
                        _ = stop.changed() => return,
                        next = records.next() => next,
                    };
                    let (stage, revision, record) = match next {
                        Some(Ok(next)) => next,
                        Some(Err(e)) => {
                            tracing::warn!("{e:#}; watching again");
                            break;
                        }
                        None => break,
                    };
                    if handled.insert(stage.clone(), revision) == Some(revision) {
                        continue;
                    }
                    let Some(file) = configured.get(&stage) else {
                        continue;
                    };
                    match bring(&deploys, &shared, &loader, &stage, file, &record).await {
                        Ok(Some(label)) => {
                            shared
                                .counters
                                .cluster_followed
                                .fetch_add(1, Ordering::Relaxed);
                            tracing::info!(%stage, plugin = %label, by = %record.host, "followed the pipeline's other hosts");
                        }
                        Ok(None) => {}
                        Err(e) if e == crate::api::STOPPING => return,
                        Err(e) => {
                            shared
                                .counters
                                .cluster_refused
                                .fetch_add(1, Ordering::Relaxed);
                            tracing::error!(
                                %stage,
                                plugin = %record.plugin,
                                by = %record.host,
                                "not following the other hosts: {e}; this host carries on with the version it runs"
                            );
                        }
                    }
                }
            }
            Err(e) => tracing::warn!("deploys made on other hosts do not reach this one: {e:#}"),
        }
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

/// Brings `stage` to `record`; the version it runs then, or `None` when it ran that already.
async fn bring(
    deploys: &Deploys,
    shared: &Shared,
    loader: &Loader,
    stage: &str,
    configured: &Path,
    record: &Record,
) -> Result<Option<String>, String> {
    let serving = || {
        shared
            .plugins
            .load()
            .iter()
            .find(|p| p.stage == stage)
            .map(|p| p.sha256.clone())
    };
    if serving().as_deref() == Some(record.sha256.as_str()) {
        return Ok(None);
    }
    let configured_sha = hash(configured.to_path_buf()).await;
    if record.configured.is_some() && record.configured != configured_sha {
        // A configuration changed since (a new build rolled out host by host, say) is the newer word.
        tracing::info!(
            %stage,
            plugin = %record.plugin,
            by = %record.host,
            "not following a deploy made over another plugin file than the one configured here ({})",
            configured.display()
        );
        return Ok(None);
    }
    // A rollback of what runs here: the version before it is loaded already, with the state to hand back.
    if record.rollback && record.replaced == serving() {
        match crate::api::roll_back(shared, stage, false).await {
            Ok(label) if serving().as_deref() == Some(record.sha256.as_str()) => {
                return Ok(Some(label));
            }
            Err(e) if e == crate::api::STOPPING => return Err(e),
            // Rolled back to another version than the record's (or nowhere): deployed as below.
            _ => {}
        }
    }
    let (name, component) = if configured_sha.as_deref() == Some(record.sha256.as_str()) {
        let bytes = tokio::fs::read(configured)
            .await
            .map_err(|e| format!("cannot read {}: {e}", configured.display()))?;
        (configured.to_path_buf(), Bytes::from(bytes))
    } else {
        let bytes = deploys
            .component(&record.sha256)
            .await
            .map_err(|e| format!("{e:#}"))?;
        (PathBuf::from(format!("cluster:{stage}.wasm")), bytes)
    };
    crate::api::deploy(shared, loader, stage, &name, Some(component), false)
        .await
        .map(Some)
}

/// Brings this host's record of deploys to the cluster's before the plugins start. Changes nothing when
/// the pipeline forgets deploys (`plugins.deployed_dir = ""`): [`follow`] swaps to the cluster's versions
/// once it runs.
pub async fn prepare_start(deploys: &Deploys, config: &Config) -> Result<()> {
    let Some(deployed) = config.deployed() else {
        return Ok(());
    };
    for stage in config.stages()? {
        let Some(record) = deploys.record(&stage.name).await? else {
            continue;
        };
        let configured = hash(stage.path.clone()).await;
        if record.configured.is_some() && record.configured != configured {
            tracing::info!(
                stage = %stage.name,
                plugin = %record.plugin,
                by = %record.host,
                "not starting on the pipeline's last deployed version: it was deployed over another plugin \
                 file than the one configured here ({})",
                stage.path.display()
            );
            continue;
        }
        let here = deployed
            .current(&stage.name, &stage.path)
            .unwrap_or_else(|| stage.path.clone());
        if hash(here).await.as_deref() == Some(record.sha256.as_str()) {
            continue;
        }
        if configured.as_deref() == Some(record.sha256.as_str()) {
            deployed
                .forget(&stage.name)
                .with_context(|| format!("stage {}: forgetting its deploys", stage.name))?;
        } else {
            let component = deploys.component(&record.sha256).await?;
            deployed
                .record_deploy(&stage.name, &component, &stage.path)
                .with_context(|| {
                    format!("stage {}: recording the cluster's version", stage.name)
                })?;
        }
        tracing::info!(
            stage = %stage.name,
            plugin = %record.plugin,
            by = %record.host,
            "starting on the version the pipeline's other hosts run"
        );
    }
    Ok(())
}
