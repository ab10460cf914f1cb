//! The JetStream stream that holds ingested events, described by configuration and created (or updated to
//! match) at start.

use std::time::Duration;

use anyhow::{Context, Result};
use async_nats::jetstream::{self, stream};
use serde::{Deserialize, Serialize};

/// Where events are kept. Every field has a default that fits one Wikimedia stream on one machine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamConfig {
    /// The stream's name (letters, digits, `-` and `_`).
    pub name: String,
    /// Subjects the stream captures; the first is where ingest publishes.
    pub subjects: Vec<String>,
    /// Events older than this are removed. Default 7 days (Wikimedia keeps about a week of history too).
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// The stream's size cap in bytes; the oldest events go first. Default 10 GiB; 0 means no cap.
    pub max_bytes: i64,
    /// Copies kept in a NATS cluster (1 on a single server).
    pub replicas: usize,
    /// `file` (survives restarts, the default) or `memory`.
    pub storage: Storage,
    /// Publishes with a message id already seen within this window are dropped by the server: this is what
    /// makes reconnect replays harmless. Default 10 minutes: far longer than any reconnect, small enough that
    /// the server's memory of ids stays bounded during a fast backfill.
    #[serde(with = "humantime_serde")]
    pub duplicate_window: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    File,
    Memory,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            name: "WIKIMEDIA".into(),
            subjects: vec!["wikimedia.recentchange".into()],
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_bytes: 10 << 30,
            replicas: 1,
            storage: Storage::File,
            duplicate_window: Duration::from_secs(600),
        }
    }
}

impl StreamConfig {
    /// Checks the settings; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(format!(
                "stream.name {:?} must be letters, digits, `-` and `_`",
                self.name
            ));
        }
        if self.subjects.is_empty()
            || self
                .subjects
                .iter()
                .any(|s| s.is_empty() || s.contains(' '))
        {
            return Err("stream.subjects must list at least one subject, without spaces".into());
        }
        if self.replicas == 0 || self.replicas > 5 {
            return Err("stream.replicas must be 1 to 5".into());
        }
        if self.duplicate_window.is_zero() {
            return Err(
                "stream.duplicate_window must be positive: it is what drops replays".into(),
            );
        }
        Ok(())
    }

    /// The subject ingest publishes to.
    pub fn subject(&self) -> &str {
        &self.subjects[0]
    }

    fn to_nats(&self) -> stream::Config {
        stream::Config {
            name: self.name.clone(),
            subjects: self.subjects.clone(),
            max_age: self.max_age,
            max_bytes: if self.max_bytes == 0 {
                -1
            } else {
                self.max_bytes
            },
            num_replicas: self.replicas,
            storage: match self.storage {
                Storage::File => stream::StorageType::File,
                Storage::Memory => stream::StorageType::Memory,
            },
            duplicate_window: self.duplicate_window,
            discard: stream::DiscardPolicy::Old,
            retention: stream::RetentionPolicy::Limits,
            description: Some("Events ingested by Weir".into()),
            ..Default::default()
        }
    }

    /// Creates the stream, or updates it to these settings when it exists with others.
    pub async fn ensure(&self, js: &jetstream::Context) -> Result<stream::Stream> {
        self.validate().map_err(anyhow::Error::msg)?;
        let wanted = self.to_nats();
        let mut stream = js
            .get_or_create_stream(wanted.clone())
            .await
            .with_context(|| format!("cannot create JetStream stream {}", self.name))?;
        let current = stream.info().await?.config.clone();
        let differs = current.subjects != wanted.subjects
            || current.max_age != wanted.max_age
            || current.max_bytes != wanted.max_bytes
            || current.num_replicas != wanted.num_replicas
            || current.duplicate_window != wanted.duplicate_window;
        if differs {
            js.update_stream(wanted)
                .await
                .with_context(|| format!("cannot update JetStream stream {}", self.name))?;
            stream = js.get_stream(&self.name).await?;
            tracing::info!(stream = %self.name, "updated the stream's settings");
        }
        Ok(stream)
    }
}
