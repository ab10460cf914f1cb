//! Deploys and rollbacks reach every host of a pipeline. A deploy from the API goes to one host (whichever
//! the load balancer picks), a file in the watched directory to the host that watches it; the other hosts
//! sharing the stream follow through the cluster's record (`bus::deploys`):
//!
//! - [`announce`]: each deploy or rollback applied here (from the API, the CLI, the watched directory, or the
//!   error-rate watch) is put in the record, off the pipeline thread, and tried again until NATS takes it;
//!   one NATS has not taken when the host stops is kept (`plugins.deployed_dir`) and put at its next start.
//! - [`follow`]: every host watches the record and brings each stage to it the way a deploy made here goes
//!   (compile, contract, self-test on its own recent events, swap between batches, state handed over), or
//!   by a rollback when the record rolls back the version the host runs to the one it ran before. A host
//!   that refuses a version (its self-test fails, say) carries on with what it runs, says so, and remembers
//!   the refusal across restarts (`plugins.deployed_dir`) until the next deploy.
//! - [`prepare_start`]: before the plugins start, the host's own record of deploys (`plugins.deployed_dir`)
//!   is brought to the cluster's, so a new host (a pod rescheduled with an empty disk) starts on the version
//!   the others run rather than swap to it after its first batches. A host that forgets its deploys
//!   (`deployed_dir = ""`) starts on the configured versions and follows only the deploys made while it runs.
//!
//! - [`report`]: each host says what it runs, so any host's `/api/v1/plugins` shows whether all of them
//!   followed.
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

use super::deployed::{Deployed, fingerprint};
use super::shared::Shared;
use crate::bus::deploys::{Deploys, HostReport, REPORT_TTL, Record, Since};
use crate::config::{Config, ResolvedStage};
use crate::runtime::{Loader, component_sha256};

/// A deploy or rollback applied on this host, for the others to follow.
#[derive(Debug)]
pub struct Announcement {
    pub stage: String,
    pub record: Record,
    /// A deploy's component. A rollback's is looked for in `found_at`, for the hosts that never ran the
    /// version rolled back to.
    pub component: Option<Bytes>,
    pub found_at: Vec<PathBuf>,
}

/// The pipeline thread's side of [`announce`]: makes each deploy or rollback applied here into the cluster's
/// record, keeps it in `deployed` (written before anything else can happen, so a stop at any moment after
/// leaves it there) until NATS takes it, and hands it to [`announce`].
pub struct Herald {
    to: tokio::sync::mpsc::UnboundedSender<Announcement>,
    host: String,
    deployed: Option<Deployed>,
    /// By stage index: the configured plugin file, and its SHA-256 when this host started on it.
    configured: Vec<(PathBuf, Option<String>)>,
}

impl Herald {
    pub async fn new(
        to: tokio::sync::mpsc::UnboundedSender<Announcement>,
        host: String,
        deployed: Option<Deployed>,
        configured: &[PathBuf],
    ) -> Herald {
        let mut hashed = Vec::with_capacity(configured.len());
        for file in configured {
            hashed.push((file.clone(), hash(file.clone()).await));
        }
        Herald {
            to,
            host,
            deployed,
            configured: hashed,
        }
    }

    /// Stage `index` (`stage`) now runs `serving` in place of `replaced` (its SHA-256): deployed with
    /// `component`, or rolled back.
    pub fn announce(
        &self,
        index: usize,
        stage: &str,
        serving: (String, &crate::runtime::LoadedPlugin),
        replaced: String,
        component: Option<Bytes>,
    ) {
        let (label, loaded) = serving;
        let (configured, configured_sha) = &self.configured[index];
        let record = Record {
            sha256: loaded.sha256.clone(),
            plugin: label,
            configured: configured_sha.clone(),
            replaced: Some(replaced),
            rollback: component.is_none(),
            host: self.host.clone(),
            at_ms: chrono::Utc::now().timestamp_millis(),
        };
        let mut found_at = vec![loaded.path.clone(), configured.clone()];
        if let Some(deployed) = &self.deployed {
            found_at.push(deployed.current_file(stage));
            if let Err(e) = deployed.record_unannounced(stage, &record) {
                tracing::warn!(
                    %stage,
                    "cannot keep this deploy for the next start ({e}): should NATS not take it before \
                     this host stops, the other hosts never hear of it; check that plugins.deployed_dir is \
                     writable"
                );
            }
        }
        let announcement = Announcement {
            stage: stage.to_string(),
            record,
            component,
            found_at,
        };
        if self.to.send(announcement).is_err() {
            tracing::warn!(%stage, "deployed here only: the other hosts of the pipeline cannot hear of it");
        }
    }
}

/// Puts each announcement in the cluster's record, until the pipeline drops its sender and the last ones
/// are in. One NATS does not take is tried again (after a second, doubling up to half a minute, or at once
/// when another comes), with only the newest of each stage kept: the record is what the stage runs now. A
/// retry does not put its record over a newer one another host put meanwhile. A record NATS took, or one a
/// newer record superseded, is no longer kept in `deployed` ([`Herald`]); one still kept when the host
/// stops goes out at its next start ([`prepare_start`]).
pub async fn announce(
    deploys: Deploys,
    deployed: Option<Deployed>,
    mut announcements: tokio::sync::mpsc::UnboundedReceiver<Announcement>,
) {
    let announced = |stage: &str, record: &Record| {
        if let Some(deployed) = &deployed
            && let Err(e) = deployed.announced(stage, &record.id())
        {
            tracing::warn!(%stage, "the next start puts this record again: {e}");
        }
    };
    let mut waiting = Waiting::new();
    let mut open = true;
    let mut pause = Duration::from_secs(1);
    loop {
        if waiting.is_empty() {
            match announcements.recv().await {
                Some(announcement) => queue(&mut waiting, announcement).await,
                None => return,
            }
        }
        while let Ok(announcement) = announcements.try_recv() {
            queue(&mut waiting, announcement).await;
        }
        for (stage, (record, component, retried)) in std::mem::take(&mut waiting) {
            if retried
                && let Ok(Some((_, newer))) = deploys.record(&stage).await
                && newer.at_ms > record.at_ms
            {
                tracing::warn!(
                    %stage,
                    plugin = %record.plugin,
                    newer = %newer.plugin,
                    by = %newer.host,
                    "not announced: another host deployed to this stage since; this host follows that"
                );
                announced(&stage, &record);
                continue;
            }
            match deploys.put(&stage, &record, component.as_deref()).await {
                Ok(()) => {
                    tracing::info!(%stage, plugin = %record.plugin, "the pipeline's other hosts follow");
                    announced(&stage, &record);
                }
                Err(e) => {
                    tracing::warn!(
                        %stage,
                        plugin = %record.plugin,
                        "the pipeline's other hosts cannot hear of this yet (tried again in {pause:?}): {e:#}"
                    );
                    waiting.insert(stage, (record, component, true));
                }
            }
        }
        if waiting.is_empty() {
            pause = Duration::from_secs(1);
            if !open {
                return;
            }
            continue;
        }
        // Wait before trying again; a new announcement, or the pipeline's end, tries again at once.
        tokio::select! {
            _ = tokio::time::sleep(pause) => pause = (pause * 2).min(Duration::from_secs(30)),
            next = announcements.recv(), if open => match next {
                Some(announcement) => queue(&mut waiting, announcement).await,
                None => open = false,
            },
        }
    }
}

/// By stage: the record to put, its component, and whether it was tried before.
type Waiting = BTreeMap<String, (Record, Option<Bytes>, bool)>;

/// Queues an announcement, in place of one for its stage not put yet.
async fn queue(waiting: &mut Waiting, announcement: Announcement) {
    let Announcement {
        stage,
        record,
        component,
        found_at,
    } = announcement;
    let component = match component {
        Some(component) => Some(component),
        None => read_version(&found_at, &record.sha256).await,
    };
    waiting.insert(stage, (record, component, false));
}

/// The first of `files` whose SHA-256 is `sha256`, read.
async fn read_version(files: &[PathBuf], sha256: &str) -> Option<Bytes> {
    for file in files {
        let Ok(bytes) = tokio::fs::read(file).await else {
            continue;
        };
        let bytes = Bytes::from(bytes);
        let check = bytes.clone();
        let hashed = tokio::task::spawn_blocking(move || component_sha256(&check)).await;
        if hashed.ok().as_deref() == Some(sha256) {
            return Some(bytes);
        }
    }
    None
}

/// [`fingerprint`], off the async threads (a Python component is tens of MB).
async fn hash(file: PathBuf) -> Option<String> {
    tokio::task::spawn_blocking(move || fingerprint(&file))
        .await
        .ok()
        .flatten()
}

/// Why a stage was not brought to a record.
enum NotFollowed {
    /// The pipeline is stopping.
    Stopping,
    /// The component could not be read (NATS away, say): tried again.
    Unavailable(String),
    /// This host refused the version: not tried again until the next deploy.
    Refused(String),
    /// A later deploy or rollback of the stage was applied here while it was being prepared.
    Superseded(String),
}

/// Watches the cluster's record and brings each stage to it, until `stop`. `configured` holds each stage's
/// configured plugin file; `deployed`, where this host remembers its deploys (and its refusals).
pub async fn follow(
    deploys: Deploys,
    shared: Arc<Shared>,
    loader: Loader,
    configured: BTreeMap<String, PathBuf>,
    deployed: Option<Deployed>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    // A host that forgets its deploys follows only those made while it runs.
    let mut since = match deployed {
        Some(_) => Since::Current,
        None => loop {
            match deploys.revision().await {
                Ok(revision) => break Since::After(revision),
                Err(e) => {
                    tracing::warn!(
                        "deploys made on other hosts do not reach this one for now: {e:#}"
                    );
                    if pause(&mut stop).await {
                        return;
                    }
                }
            }
        },
    };
    let mut refused: BTreeMap<String, String> = configured
        .keys()
        .filter_map(|stage| Some((stage.clone(), deployed.as_ref()?.refused(stage)?)))
        .collect();
    loop {
        let records = match deploys.watch(since).await {
            Ok(records) => records,
            Err(e) => {
                tracing::warn!("deploys made on other hosts do not reach this one for now: {e:#}");
                if pause(&mut stop).await {
                    return;
                }
                continue;
            }
        };
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
            since = Since::After(revision);
            let Some(file) = configured.get(&stage) else {
                continue;
            };
            // Only a stage's newest record counts: an older one still on its way here (a deploy rolled back
            // since, say) is passed over. An answer older than the watch's (or none) is a replica that has not
            // stored it yet (reads go to any replica): the watch's record is the newest known then.
            match deploys.record(&stage).await {
                Ok(Some((newest, _))) if newest > revision => continue,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(%stage, "cannot follow the other hosts yet: {e:#}");
                    since = Since::After(revision - 1);
                    break;
                }
            }
            if refused.get(&stage) == Some(&record.id()) {
                continue;
            }
            match bring(&deploys, &shared, &loader, &stage, file, &record).await {
                Ok(Some(label)) => {
                    shared
                        .counters
                        .cluster_followed
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::info!(%stage, plugin = %label, by = %record.host, "followed the pipeline's other hosts");
                }
                Ok(None) => {}
                Err(NotFollowed::Stopping) => return,
                Err(NotFollowed::Superseded(e)) => {
                    tracing::info!(%stage, plugin = %record.plugin, "not followed: {e}");
                }
                Err(NotFollowed::Unavailable(e)) => {
                    tracing::warn!(%stage, plugin = %record.plugin, "cannot follow the other hosts yet: {e}");
                    // Watched again from this record on.
                    since = Since::After(revision - 1);
                    break;
                }
                Err(NotFollowed::Refused(e)) => {
                    shared
                        .counters
                        .cluster_refused
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::error!(
                        %stage,
                        plugin = %record.plugin,
                        by = %record.host,
                        "not following the other hosts: {e}; this host carries on with the version it runs \
                         until the next deploy"
                    );
                    if let Some(deployed) = &deployed
                        && let Err(e) = deployed.record_refusal(&stage, &record.id())
                    {
                        tracing::warn!(%stage, "a restart will not remember the refusal: {e}");
                    }
                    refused.insert(stage, record.id());
                }
            }
        }
        if pause(&mut stop).await {
            return;
        }
    }
}

/// Waits a few seconds before watching again; whether the pipeline stopped meanwhile.
async fn pause(stop: &mut tokio::sync::watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = stop.changed() => true,
        _ = tokio::time::sleep(Duration::from_secs(5)) => false,
    }
}

/// Brings `stage` to `record`; the version it runs then, or `None` when there was nothing to do.
async fn bring(
    deploys: &Deploys,
    shared: &Shared,
    loader: &Loader,
    stage: &str,
    configured: &Path,
    record: &Record,
) -> Result<Option<String>, NotFollowed> {
    let serving = shared
        .plugins
        .load()
        .iter()
        .find(|p| p.stage == stage)
        .map(|p| p.sha256.clone());
    if serving.as_deref() == Some(record.sha256.as_str()) {
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
    let refused = |e: String| {
        if e == crate::api::STOPPING {
            NotFollowed::Stopping
        } else if e.contains(super::runner::SUPERSEDED) {
            NotFollowed::Superseded(e)
        } else {
            NotFollowed::Refused(e)
        }
    };
    // A rollback of what runs here to what ran before: that version is loaded already, and takes its state
    // back as a rollback here does. Otherwise (this host ran another version before) it is deployed.
    if record.rollback && record.replaced == serving {
        match crate::api::roll_back(shared, stage, false, Some(&record.sha256)).await {
            Ok(label) => return Ok(Some(label)),
            Err(e) if e == crate::api::STOPPING => return Err(NotFollowed::Stopping),
            Err(_) => {}
        }
    }
    let (name, component) = if configured_sha.as_deref() == Some(record.sha256.as_str()) {
        let bytes = tokio::fs::read(configured).await.map_err(|e| {
            NotFollowed::Unavailable(format!("cannot read {}: {e}", configured.display()))
        })?;
        (configured.to_path_buf(), Bytes::from(bytes))
    } else {
        let bytes = deploys
            .component(&record.sha256)
            .await
            .map_err(|e| NotFollowed::Unavailable(format!("{e:#}")))?
            .ok_or_else(|| {
                NotFollowed::Refused(format!(
                    "{} is not in the cluster's store (removed as unused since); deploy it again",
                    record.plugin
                ))
            })?;
        (PathBuf::from(format!("cluster:{stage}.wasm")), bytes)
    };
    crate::api::deploy(shared, loader, stage, &name, Some(component), false)
        .await
        .map(Some)
        .map_err(refused)
}

/// Says what this host runs: at once, whenever it changes, and every [`REPORT_TTL`] / 3 so the report
/// outlasts the host by [`REPORT_TTL`] at most; takes it away at `stop`.
pub async fn report(
    deploys: Deploys,
    shared: Arc<Shared>,
    host: String,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut said: Option<(BTreeMap<String, String>, std::time::Instant)> = None;
    let mut failing = false;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = tick.tick() => {}
        }
        let plugins: BTreeMap<String, String> = shared
            .plugins
            .load()
            .iter()
            .map(|p| (p.stage.clone(), format!("{}@{}", p.name, p.version)))
            .collect();
        if said
            .as_ref()
            .is_some_and(|(before, at)| *before == plugins && at.elapsed() < REPORT_TTL / 3)
        {
            continue;
        }
        let report = HostReport {
            host: host.clone(),
            plugins: plugins.clone(),
            at_ms: chrono::Utc::now().timestamp_millis(),
        };
        match deploys.report(&report).await {
            Ok(()) => {
                failing = false;
                said = Some((plugins, std::time::Instant::now()));
            }
            Err(e) if !failing => {
                failing = true;
                tracing::warn!("the other hosts cannot see what this one runs for now: {e:#}");
            }
            Err(_) => {}
        }
    }
    if let Err(e) = deploys.leave(&host).await {
        tracing::debug!("{e:#}");
    }
}

/// Brings this host's record of deploys to the cluster's before the plugins start. Changes nothing when
/// the pipeline forgets deploys (`plugins.deployed_dir = ""`).
pub async fn prepare_start(deploys: &Deploys, config: &Config) -> Result<()> {
    let Some(deployed) = config.deployed() else {
        return Ok(());
    };
    for stage in config.stages()? {
        let record = deploys.record(&stage.name).await?.map(|(_, record)| record);
        if announce_kept(deploys, &deployed, &stage, record.as_ref()).await? {
            continue;
        }
        let Some(record) = record else {
            continue;
        };
        if deployed.refused(&stage.name) == Some(record.id()) {
            tracing::info!(
                stage = %stage.name,
                plugin = %record.plugin,
                by = %record.host,
                "not starting on the pipeline's last deployed version: this host refused it"
            );
            continue;
        }
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
            let Some(component) = deploys.component(&record.sha256).await? else {
                tracing::warn!(
                    stage = %stage.name,
                    plugin = %record.plugin,
                    "not starting on the pipeline's last deployed version: it is not in the cluster's store \
                     (removed as unused since); deploy it again"
                );
                continue;
            };
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

/// Puts the record of the deploy or rollback of `stage` that this host made while NATS was away, if it
/// stopped before NATS came back ([`Herald`] kept it in `deployed`), unless another host deployed to the
/// stage since (`newest`, the cluster's record) or this host no longer runs it. Whether it put one: the
/// stage then starts on it, and the pipeline's other hosts follow. Should NATS refuse it now, the host
/// follows the cluster's record, and says to deploy again.
async fn announce_kept(
    deploys: &Deploys,
    deployed: &Deployed,
    stage: &ResolvedStage,
    newest: Option<&Record>,
) -> Result<bool> {
    let Some(kept) = deployed.unannounced(&stage.name) else {
        return Ok(false);
    };
    let here = deployed
        .current(&stage.name, &stage.path)
        .unwrap_or_else(|| stage.path.clone());
    let component = read_version(std::slice::from_ref(&here), &kept.sha256).await;
    // Hosts' clocks decide which of two deploys is the newer, as they do at run time.
    let why_not = match newest {
        Some(newest) if newest.id() == kept.id() => Some("NATS took it before the stop"),
        Some(newest) if newest.at_ms > kept.at_ms => {
            Some("another host deployed to the stage since")
        }
        _ if component.is_none() => Some("this host no longer runs it"),
        _ => None,
    };
    // Whatever happens to it now, it is kept no longer.
    let put = match why_not {
        Some(why_not) => {
            tracing::info!(
                stage = %stage.name,
                plugin = %kept.plugin,
                "not putting the deploy made here while NATS was away in the cluster's record: {why_not}"
            );
            false
        }
        None => match deploys.put(&stage.name, &kept, component.as_deref()).await {
            Ok(()) => {
                tracing::info!(
                    stage = %stage.name,
                    plugin = %kept.plugin,
                    "put the deploy made here while NATS was away in the cluster's record: the pipeline's \
                     other hosts follow"
                );
                true
            }
            Err(e) => {
                tracing::warn!(
                    stage = %stage.name,
                    plugin = %kept.plugin,
                    "cannot put the deploy made here while NATS was away in the cluster's record ({e:#}): \
                     this host starts on the cluster's version; deploy {} again once NATS takes writes",
                    kept.plugin
                );
                false
            }
        },
    };
    deployed.announced(&stage.name, &kept.id())?;
    Ok(put)
}
