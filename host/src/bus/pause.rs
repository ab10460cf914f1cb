//! The cluster's word on whether the pipeline takes events, so that a pause or a resume asked of one host
//! (the API goes to whichever host the load balancer picks) reaches every host sharing the stream, and a
//! host that starts while the pipeline is paused (a restart, a rescheduled pod, one more replica) starts
//! paused. Kept in JetStream, which every host reaches already: a key-value bucket
//! `weir_control_<pipeline>` whose key `paused` holds a [`PauseRecord`]. Every host watches it
//! (`pipeline::pause`).

use anyhow::{Context, Result};
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};

use super::key_value;

const KEY: &str = "paused";

/// Whether the pipeline takes events, as the last host asked to pause or resume it left it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PauseRecord {
    pub paused: bool,
    /// The host that was asked, and when (ms since the epoch).
    pub host: String,
    pub at_ms: i64,
}

/// The pause record of one pipeline.
#[derive(Clone)]
pub struct ClusterPause {
    kv: kv::Store,
}

impl ClusterPause {
    /// Opens (creating when missing) the pipeline's bucket, kept on `replicas` servers as the stream is.
    pub async fn open(
        js: &jetstream::Context,
        pipeline: &str,
        replicas: usize,
    ) -> Result<ClusterPause> {
        let kv = key_value(
            js,
            kv::Config {
                bucket: format!("weir_control_{pipeline}"),
                description: format!("Whether Weir pipeline {pipeline} is paused"),
                history: 1,
                num_replicas: replicas,
                ..Default::default()
            },
        )
        .await?;
        Ok(ClusterPause { kv })
    }

    /// Puts `record` for every host to follow; its revision.
    pub async fn set(&self, record: &PauseRecord) -> Result<u64> {
        self.kv
            .put(KEY, Bytes::from(serde_json::to_vec(record)?))
            .await
            .context("cannot put the pipeline's pause record")
    }

    /// Puts `record` only if the record is still at revision `last` (`None`: there is none), so that a word
    /// held back while NATS was away does not undo one given since; its revision, or `None` when another
    /// came first.
    pub async fn set_if_still(
        &self,
        record: &PauseRecord,
        last: Option<u64>,
    ) -> Result<Option<u64>> {
        let value = Bytes::from(serde_json::to_vec(record)?);
        let put = match last {
            Some(revision) => self.kv.update(KEY, value, revision).await.map_err(|e| {
                (
                    e.kind() == kv::UpdateErrorKind::WrongLastRevision,
                    e.to_string(),
                )
            }),
            None => self.kv.create(KEY, value).await.map_err(|e| {
                (
                    e.kind() == kv::CreateErrorKind::AlreadyExists,
                    e.to_string(),
                )
            }),
        };
        match put {
            Ok(revision) => Ok(Some(revision)),
            Err((true, _)) => Ok(None),
            Err((false, e)) => Err(anyhow::anyhow!(
                "cannot put the pipeline's pause record: {e}"
            )),
        }
    }

    /// The record as it stands, with its revision; `None` when no host was ever asked to pause.
    pub async fn current(&self) -> Result<Option<(u64, PauseRecord)>> {
        match self
            .kv
            .entry(KEY)
            .await
            .context("reading the pipeline's pause record")?
        {
            Some(entry) if entry.operation == kv::Operation::Put => {
                parse(&entry.value).map(|r| Some((entry.revision, r)))
            }
            _ => Ok(None),
        }
    }

    /// The records put after revision `seen`, with their revisions. One this Weir cannot read is passed over
    /// with a warning.
    pub async fn watch_after(
        &self,
        seen: u64,
    ) -> Result<impl Stream<Item = Result<(u64, PauseRecord)>> + use<>> {
        let watch = self
            .kv
            .watch_from_revision(KEY, seen + 1)
            .await
            .context("cannot watch the pipeline's pause record")?;
        Ok(watch.filter_map(|entry| async move {
            match entry {
                Ok(entry) if entry.operation == kv::Operation::Put => match parse(&entry.value) {
                    Ok(record) => Some(Ok((entry.revision, record))),
                    Err(e) => {
                        tracing::warn!("passed over: {e:#}");
                        None
                    }
                },
                Ok(_) => None,
                Err(e) => Some(Err(anyhow::anyhow!(
                    "watching the pipeline's pause record: {e}"
                ))),
            }
        }))
    }
}

fn parse(value: &[u8]) -> Result<PauseRecord> {
    serde_json::from_slice(value).context("the pipeline's pause record is not one Weir wrote")
}
