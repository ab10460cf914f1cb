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
    /// The stream's size cap in bytes; the oldest events go first. Default 10 GiB; 0 means no cap. At the
    /// live Wikimedia rate (~35 events/s of ~1.2 kB with headers, ~4 GB a day) the cap comes before
    /// `max_age`: 10 GiB holds about 2.5 days, which is how long a pipeline may be down before it misses
    /// events. Raise it (or set 0) for a longer outage budget.
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
        // NATS refuses a window under 100 ms or longer than the messages are kept, but only once it is asked
        // to create the stream.
        if self.duplicate_window < Duration::from_millis(100) {
            return Err(
                "stream.duplicate_window must be at least 100ms: it is what drops replays".into(),
            );
        }
        if !self.max_age.is_zero() && self.duplicate_window > self.max_age {
            return Err(format!(
                "stream.duplicate_window {:?} must not be longer than stream.max_age {:?} (NATS refuses it)",
                self.duplicate_window, self.max_age
            ));
        }
        if self.max_bytes < 0 {
            return Err(format!(
                "stream.max_bytes {} must be 0 (no cap) or a size in bytes",
                self.max_bytes
            ));
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

    /// Creates the stream with these settings when it is missing; one that exists is used as it is, with
    /// this config's first subject added when it lacks it. For ingest beside a pipeline (`weir ingest` next
    /// to `weir run --no-source`): the pipeline's config owns the stream, and a second process with default
    /// settings must not shrink it (JetStream drops at once what new limits exclude) or take its subjects.
    pub async fn ensure_exists(&self, js: &jetstream::Context) -> Result<stream::Stream> {
        self.validate().map_err(anyhow::Error::msg)?;
        let mut stream = js
            .get_or_create_stream(self.to_nats())
            .await
            .with_context(|| format!("cannot create JetStream stream {}", self.name))?;
        let mut current = stream.info().await?.config.clone();
        let subject = self.subject().to_string();
        let covered = current
            .subjects
            .iter()
            .any(|pattern| subject_matches(pattern, &subject));
        if !covered {
            current.subjects.push(subject.clone());
            js.update_stream(current)
                .await
                .with_context(|| format!("cannot add subject {subject} to stream {}", self.name))?;
            stream = js.get_stream(&self.name).await?;
            tracing::info!(stream = %self.name, %subject, "added the subject to the stream");
        }
        Ok(stream)
    }
}

/// Whether NATS subject `pattern` (with `*` for one token and a final `>` for the rest) takes `subject`.
fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut tokens = subject.split('.');
    for want in pattern.split('.') {
        match (want, tokens.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (want, Some(token)) if want == token => {}
            _ => return false,
        }
    }
    tokens.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::subject_matches;

    #[test]
    fn subjects_match_as_nats_does() {
        assert!(subject_matches(
            "wikimedia.recentchange",
            "wikimedia.recentchange"
        ));
        assert!(subject_matches("wikimedia.*", "wikimedia.recentchange"));
        assert!(subject_matches("wikimedia.>", "wikimedia.recentchange.x"));
        assert!(subject_matches(">", "a"));
        assert!(!subject_matches("wikimedia.*", "wikimedia.recentchange.x"));
        assert!(!subject_matches(
            "wikimedia.recentchange.x",
            "wikimedia.recentchange"
        ));
        assert!(!subject_matches("other", "wikimedia"));
    }
}
