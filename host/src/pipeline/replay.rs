//! Replays: the silver and gold tables computed again from the stream (from a sequence or a time), through
//! the current plugins or new versions of some, into a new table version.
//!
//! A replay is the pipeline itself with three differences: its own durable consumer that starts where the
//! replay starts, an end (the stream's last sequence when it began, or `--to-seq`), and its own lake (by
//! default `<lake>/_versions/<version>`, beside the live tables, which it never touches). The commit
//! protocol is the same, so a replay that is interrupted and run again resumes without duplicating rows.

use std::time::Duration;

use anyhow::{Context, Result};
use async_nats::jetstream::{self, consumer::pull};

/// Where a replay starts.
#[derive(Clone, Debug, PartialEq)]
pub enum ReplayStart {
    Sequence(u64),
    /// Milliseconds since the epoch: the first message stored at or after it.
    Time(i64),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Replay {
    /// The table version's name (`v2`, `fix-enrich`): letters, digits, `-` and `_`.
    pub version: String,
    pub start: ReplayStart,
    /// The last stream sequence to replay; `None`: the stream's last one when the replay starts.
    pub until: Option<u64>,
}

impl Replay {
    pub fn validate(&self) -> Result<(), String> {
        if self.version.is_empty()
            || !self
                .version
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(format!(
                "replay version {:?}: use letters, digits, `-` and `_`",
                self.version
            ));
        }
        if let (ReplayStart::Sequence(from), Some(until)) = (&self.start, self.until)
            && until < *from
        {
            return Err(format!(
                "replay: --to-seq {until} is before the start ({from})"
            ));
        }
        Ok(())
    }

    /// The lake a replay writes into, beside the live one.
    pub fn lake_url(&self, live: &str) -> String {
        format!("{}/_versions/{}", live.trim_end_matches('/'), self.version)
    }

    /// The durable consumer of this replay (its own, so the live pipeline's position is untouched).
    pub fn durable(&self, live: &str) -> String {
        format!("{live}-replay-{}", self.version)
    }

    pub fn deliver_policy(&self) -> Result<jetstream::consumer::DeliverPolicy> {
        Ok(match self.start {
            ReplayStart::Sequence(start_sequence) => {
                jetstream::consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: start_sequence.max(1),
                }
            }
            ReplayStart::Time(ms) => jetstream::consumer::DeliverPolicy::ByStartTime {
                start_time: async_nats::datetime::from_nanos(ms as i128 * 1_000_000)
                    .map_err(|e| anyhow::anyhow!("replay start time {ms}: {e}"))?,
            },
        })
    }
}

/// The last sequence a replay covers: `until`, or the stream's last sequence now.
pub async fn last_sequence(js: &jetstream::Context, stream: &str, replay: &Replay) -> Result<u64> {
    let mut stream = js
        .get_stream(stream)
        .await
        .with_context(|| format!("stream {stream} does not exist"))?;
    let last = stream.info().await?.state.last_sequence;
    Ok(replay.until.map_or(last, |u| u.min(last)))
}

/// Resolves once the replay's consumer has every message up to `until` acked, i.e. committed (or when
/// nothing is left to deliver).
pub async fn finished(mut consumer: jetstream::consumer::Consumer<pull::Config>, until: u64) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        let Ok(info) = consumer.info().await else {
            continue;
        };
        let done = info.ack_floor.stream_sequence >= until
            || (info.num_pending == 0
                && info.num_ack_pending == 0
                && info.delivered.stream_sequence > 0);
        if done {
            tracing::info!(until, "replay complete");
            return;
        }
    }
}

/// Removes the replay's consumer once it is done (running the replay again creates a new one, and the
/// commit log skips what is already in the version's tables).
pub async fn remove_consumer(js: &jetstream::Context, stream: &str, durable: &str) {
    if let Ok(stream) = js.get_stream(stream).await
        && let Err(e) = stream.delete_consumer(durable).await
    {
        tracing::warn!(durable, "cannot remove the replay's consumer: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_named_safely_and_live_beside_the_lake() {
        let replay = Replay {
            version: "v2".into(),
            start: ReplayStart::Sequence(10),
            until: Some(20),
        };
        assert!(replay.validate().is_ok());
        assert_eq!(replay.lake_url("./lake/"), "./lake/_versions/v2");
        assert_eq!(replay.durable("weir-wikimedia"), "weir-wikimedia-replay-v2");
        let bad = Replay {
            version: "../x".into(),
            ..replay.clone()
        };
        assert!(bad.validate().is_err());
        let backwards = Replay {
            until: Some(5),
            ..replay
        };
        assert!(backwards.validate().is_err());
    }
}
