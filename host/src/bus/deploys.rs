//! The cluster's word on which version each stage runs, so that a deploy or a rollback made on one host of a
//! pipeline reaches every host sharing its stream (and a host started later, or rescheduled with an empty
//! disk, starts on it). Kept in JetStream, which every host reaches already:
//!
//! - a key-value bucket `weir_deploys_<pipeline>`, one key per stage, holding a [`Record`];
//! - an object store bucket `weir_plugins_<pipeline>`, the deployed components by SHA-256.
//!
//! - a key-value bucket `weir_hosts_<pipeline>`, what each running host runs ([`HostReport`]), put again
//!   every few seconds and gone half a minute after a host stops putting it.
//!
//! A host that deploys or rolls back puts the component first, then the record; every host watches the
//! records and follows them (`pipeline::cluster`). When a record is put, components no record refers to
//! that are older than ten minutes are removed, so the bucket holds a few versions per stage, not every one
//! ever deployed.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result, bail};
use async_nats::jetstream::{self, kv, object_store};
use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use super::{cannot_create, key_value};

/// How old a component no record names must be before it is removed, in seconds.
const UNUSED_AFTER_S: i64 = 600;

/// Where a watch of the records starts.
#[derive(Clone, Copy, Debug)]
pub enum Since {
    /// Each stage's record as it is now, then each change.
    Current,
    /// The changes after this revision.
    After(u64),
}

/// What a stage of the pipeline should run, as the last host to deploy or roll it back left it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// SHA-256 of the component to run.
    pub sha256: String,
    /// Its label (`name@version`), for messages.
    pub plugin: String,
    /// SHA-256 of the configured plugin file the deploy was made over: a host configured with another file
    /// does not follow (its configuration is the newer word, as at a restart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configured: Option<String>,
    /// The version this record's deploy replaced, or for a rollback the version rolled back from: kept in
    /// the bucket, so a host can still follow a rollback to the version before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced: Option<String>,
    /// Whether this is a rollback (from `replaced`).
    #[serde(default)]
    pub rollback: bool,
    /// The host that deployed or rolled back, and when (ms since the epoch).
    pub host: String,
    pub at_ms: i64,
}

impl Record {
    /// What tells this deploy from another of the same component (a redeploy after a refusal, say).
    pub fn id(&self) -> String {
        format!("{} {} {}", self.sha256, self.host, self.at_ms)
    }
}

/// What a running host runs, as it last said.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostReport {
    pub host: String,
    /// By stage, the label (`name@version`) of the version it runs.
    pub plugins: BTreeMap<String, String>,
    /// When it said so (ms since the epoch).
    pub at_ms: i64,
}

/// How long a host's report outlives its last renewal.
pub const REPORT_TTL: std::time::Duration = std::time::Duration::from_secs(30);

/// The records, components and host reports of one pipeline.
#[derive(Clone)]
pub struct Deploys {
    records: kv::Store,
    components: object_store::ObjectStore,
    hosts: kv::Store,
}

impl Deploys {
    /// Opens (creating when missing) the pipeline's buckets, kept on `replicas` servers as the stream is.
    pub async fn open(js: &jetstream::Context, pipeline: &str, replicas: usize) -> Result<Deploys> {
        let records = key_value(
            js,
            kv::Config {
                bucket: format!("weir_deploys_{pipeline}"),
                description: format!(
                    "The plugin version each stage of Weir pipeline {pipeline} runs"
                ),
                history: 1,
                num_replicas: replicas,
                ..Default::default()
            },
        )
        .await?;
        let hosts = key_value(
            js,
            kv::Config {
                bucket: format!("weir_hosts_{pipeline}"),
                description: format!("What each host of Weir pipeline {pipeline} runs"),
                history: 1,
                max_age: REPORT_TTL,
                num_replicas: replicas,
                ..Default::default()
            },
        )
        .await?;
        let bucket = format!("weir_plugins_{pipeline}");
        let components = match js.get_object_store(&bucket).await {
            Ok(store) => store,
            Err(_) => js
                .create_object_store(object_store::Config {
                    bucket: bucket.clone(),
                    description: Some(format!(
                        "Plugin components deployed to Weir pipeline {pipeline}, by SHA-256"
                    )),
                    num_replicas: replicas,
                    ..Default::default()
                })
                .await
                .with_context(|| cannot_create("object store", &bucket, "OBJ"))?,
        };
        Ok(Deploys {
            records,
            components,
            hosts,
        })
    }

    /// Says what this host runs (again: a report lasts [`REPORT_TTL`]).
    pub async fn report(&self, report: &HostReport) -> Result<()> {
        self.hosts
            .put(&report.host, Bytes::from(serde_json::to_vec(report)?))
            .await
            .context("cannot report what this host runs")?;
        Ok(())
    }

    /// Takes this host's report away (at a clean stop).
    pub async fn leave(&self, host: &str) -> Result<()> {
        self.hosts
            .delete(host)
            .await
            .context("cannot take this host's report away")?;
        Ok(())
    }

    /// The hosts with a report, whether or not this Weir can read it (a newer one's, in a rolling upgrade).
    pub async fn reporting(&self) -> Result<Vec<String>> {
        self.hosts
            .keys()
            .await
            .context("reading the hosts' reports")?
            .try_collect()
            .await
            .context("reading the hosts' reports")
    }

    /// What each running host runs, by host name.
    pub async fn hosts(&self) -> Result<Vec<HostReport>> {
        let mut keys = self
            .hosts
            .keys()
            .await
            .context("reading the hosts' reports")?
            .boxed();
        let mut reports = Vec::new();
        while let Some(host) = keys.try_next().await? {
            if let Some(value) = self.hosts.get(&host).await? {
                match serde_json::from_slice(&value) {
                    Ok(report) => reports.push(report),
                    Err(e) => tracing::warn!(%host, "a host report this Weir cannot read: {e}"),
                }
            }
        }
        reports.sort_by(|a: &HostReport, b| a.host.cmp(&b.host));
        Ok(reports)
    }

    /// The record of `stage`, if any host deployed to it, with its revision.
    pub async fn record(&self, stage: &str) -> Result<Option<(u64, Record)>> {
        match self
            .records
            .entry(stage)
            .await
            .context("reading a deploy record")?
        {
            Some(entry) if entry.operation == kv::Operation::Put => {
                parse(stage, &entry.value).map(|r| Some((entry.revision, r)))
            }
            _ => Ok(None),
        }
    }

    /// Puts `record` for `stage`, with the component it names when `component` is given (a deploy's; a
    /// rollback's target when the host has it at hand, for the hosts that never ran it). Then removes the
    /// components no record refers to.
    pub async fn put(&self, stage: &str, record: &Record, component: Option<&[u8]>) -> Result<()> {
        if let Some(bytes) = component {
            // Content-addressed: a component put in the last minutes (a redeploy) is not sent again. One put
            // earlier is, which makes it new again: the clean-up of another host may be about to remove it.
            let recent = chrono::Utc::now().timestamp() - (UNUSED_AFTER_S / 2);
            let stored = match self.components.info(&record.sha256).await {
                Ok(info) => {
                    !info.deleted && info.modified.is_some_and(|m| m.unix_timestamp() > recent)
                }
                Err(_) => false,
            };
            if !stored {
                self.components
                    .put(record.sha256.as_str(), &mut &bytes[..])
                    .await
                    .with_context(|| format!("cannot store {} in the cluster", record.plugin))?;
            }
        }
        self.records
            .put(stage, Bytes::from(serde_json::to_vec(record)?))
            .await
            .context("cannot put the deploy record")?;
        if let Err(e) = self.remove_unused().await {
            tracing::warn!("cannot remove deployed components no stage uses any more: {e:#}");
        }
        Ok(())
    }

    /// The component whose SHA-256 is `sha256`, checked against it; `None` when the store does not hold it
    /// (any more).
    pub async fn component(&self, sha256: &str) -> Result<Option<Bytes>> {
        let mut object = match self.components.get(sha256).await {
            Ok(object) => object,
            Err(e) if e.kind() == object_store::GetErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(e).with_context(|| format!("reading component {sha256} from NATS"));
            }
        };
        let mut bytes = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut object, &mut bytes)
            .await
            .with_context(|| format!("reading component {sha256}"))?;
        let got = crate::runtime::component_sha256(&bytes);
        if got != sha256 {
            bail!("component {sha256} read back as {got}");
        }
        Ok(Some(bytes.into()))
    }

    /// The revision of the newest record: a watch from [`Since::After`] it sees the changes from now on.
    pub async fn revision(&self) -> Result<u64> {
        let mut stream = self.records.stream.clone();
        let info = stream
            .info()
            .await
            .context("reading the deploy records' state")?;
        Ok(info.state.last_sequence)
    }

    /// The records from `since` on, as (stage, revision, record). A record this Weir cannot read is
    /// passed over with a warning; a deleted one is ignored (hosts carry on with what they run).
    pub async fn watch(
        &self,
        since: Since,
    ) -> Result<impl Stream<Item = Result<(String, u64, Record)>> + use<>> {
        let watch = match since {
            Since::Current => self.records.watch_with_history(">").await,
            Since::After(revision) => self.records.watch_all_from_revision(revision + 1).await,
        }
        .context("cannot watch the deploy records")?;
        Ok(watch.filter_map(|entry| async move {
            match entry {
                Ok(entry) if entry.operation == kv::Operation::Put => {
                    match parse(&entry.key, &entry.value) {
                        Ok(record) => Some(Ok((entry.key, entry.revision, record))),
                        Err(e) => {
                            tracing::warn!("passed over: {e:#}");
                            None
                        }
                    }
                }
                Ok(_) => None,
                Err(e) => Some(Err(anyhow::anyhow!("watching the deploy records: {e}"))),
            }
        }))
    }

    async fn remove_unused(&self) -> Result<()> {
        let mut used = BTreeSet::new();
        let mut keys = self.records.keys().await?.boxed();
        while let Some(stage) = keys.try_next().await? {
            if let Some((_, record)) = self.record(&stage).await? {
                used.insert(record.sha256);
                used.extend(record.replaced);
            }
        }
        // A component put in the last minutes may be another host's deploy whose record is on its way.
        let settled = chrono::Utc::now().timestamp() - UNUSED_AFTER_S;
        let mut unused = Vec::new();
        let mut list = self.components.list().await?;
        while let Some(info) = list.try_next().await? {
            let old = info.modified.is_some_and(|m| m.unix_timestamp() < settled);
            if old && !used.contains(&info.name) {
                unused.push(info.name);
            }
        }
        for name in unused {
            self.components.delete(&name).await?;
        }
        Ok(())
    }
}

fn parse(stage: &str, value: &[u8]) -> Result<Record> {
    serde_json::from_slice(value)
        .with_context(|| format!("the deploy record of stage {stage} is not one Weir wrote"))
}
