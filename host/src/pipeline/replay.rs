//! Replays: the silver and gold tables computed again from the stream (from a sequence or a time), or from
//! the lake's bronze table, through the current plugins or new versions of some, into a new table version.
//!
//! A replay is the pipeline itself with three differences: its own durable consumer that starts where the
//! replay starts, an end (the stream's last sequence when it began, or `--to-seq`), and its own lake (by
//! default `<lake>/_versions/<version>`, beside the live tables, which it never touches). The commit
//! protocol is the same, so a replay that is interrupted and run again resumes without duplicating rows.
//!
//! A replay in place (`--in-place`) runs the same way into its version, over a range planned on the live
//! lake and from the live plugin state just before it, then puts the version in place of the live rows of
//! the range in one commit (see `lake::replace`).
//!
//! A replay from bronze (for events the stream no longer holds: it keeps a week, bronze keeps everything)
//! first stages the committed bronze rows of the range in a stream of its own, in sequence order, each
//! carrying the sequence it had in the live stream; the pipeline then reads that stream as above, keying
//! rows and commits by the original sequences, so its tables line up with the live ones row for row.

use std::time::Duration;

use anyhow::{Context, Result};
use arrow_array::{
    Array, BooleanArray, RecordBatch, StringArray, TimestampMicrosecondArray, UInt64Array,
};
use async_nats::jetstream::{self, consumer::pull};
use bytes::Bytes;
use futures::StreamExt;

use crate::bus::{self, StreamConfig};
use crate::lake::log::Ranges;
use crate::lake::read;
use crate::lake::store::Store;

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
    /// Read the events from the bronze table of this lake (URL) instead of the stream. The start and end
    /// then select bronze rows: by their original sequence, or from an ingest time.
    pub bronze: Option<String>,
    /// A replay in place (`--in-place`): the range planned on the live lake, whose rows the version
    /// replaces when it is complete (see `lake::replace`).
    pub in_place: Option<crate::lake::replace::Plan>,
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
        // Checked here, not when the replay's consumer is created: by then the replay runs on its own.
        if let ReplayStart::Time(ms) = self.start
            && async_nats::datetime::from_nanos(ms as i128 * 1_000_000).is_err()
        {
            return Err(format!(
                "replay start time {ms} ms is out of the range NATS takes (years -9999 to 9999)"
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

    /// The stream a replay from bronze stages its events in (beside the live one, which it never touches).
    pub fn staging_stream(&self, live: &StreamConfig) -> StreamConfig {
        StreamConfig {
            name: format!("{}_REPLAY_{}", live.name, self.version),
            subjects: vec![format!("weir.replay.{}.{}", live.name, self.version)],
            // Never drop the oldest staged events for room; a replay that fails leaves the stream to
            // expire like the live one (a successful one removes it).
            max_bytes: 0,
            // Staged messages carry no message id: nothing for the server to remember.
            duplicate_window: Duration::from_secs(1),
            ..live.clone()
        }
    }

    pub fn deliver_policy(&self) -> Result<jetstream::consumer::DeliverPolicy> {
        if self.bronze.is_some() {
            // The staging stream holds exactly the range.
            return Ok(jetstream::consumer::DeliverPolicy::All);
        }
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
    if replay.bronze.is_some() {
        // Staged already to the range: `until` is an original sequence, not one of this stream's.
        return Ok(last);
    }
    Ok(replay.until.map_or(last, |u| u.min(last)))
}

/// Stages the committed bronze rows of `replay`'s range from `bronze` (the live lake) in the stream
/// `staging`, which is made afresh, leaving out the sequences the version holds already (`done`: a
/// replay run again stages only what it has not committed), and the ticks of the range from the log. Returns
/// the number of messages staged.
pub async fn stage_bronze(
    js: &jetstream::Context,
    bronze: &Store,
    staging: &StreamConfig,
    replay: &Replay,
    done: &Ranges,
) -> Result<u64> {
    if js.get_stream(&staging.name).await.is_ok() {
        js.delete_stream(&staging.name)
            .await
            .with_context(|| format!("cannot remove the old staging stream {}", staging.name))?;
    }
    staging.ensure(js).await?;
    let (from_seq, from_ms) = match replay.start {
        ReplayStart::Sequence(seq) => (seq, i64::MIN),
        ReplayStart::Time(ms) => (0, ms),
    };
    let until = replay.until.unwrap_or(u64::MAX);
    let subject = staging.subjects[0].clone();
    let mut acks = std::collections::VecDeque::new();
    // What this run staged, so that a pass started again (below) skips it.
    let mut staged = Ranges::default();
    let mut passes = 0;
    loop {
        let records = crate::lake::log::all_records(bronze).await?;
        // In the order of their first sequence, files come in stream order but where an epoch's files of
        // two hours overlap (the commit log does not need exact order; windows may see a
        // few events in a different order than the live run did). `rejected` is not staged: the replay
        // parses again, and events quarantined as poison get another chance.
        // Files wholly outside the range of sequences are not read (a replay from a sequence would read
        // every hour's files otherwise).
        let mut files = read::files_in_range(&records, "bronze", from_ms, i64::MAX);
        files.retain(|f| f.max_seq >= from_seq && f.min_seq <= until);
        files.sort_by_key(|f| f.min_seq);
        // Ticks are in no bronze file: they come from the log, each staged before the first row after it. A
        // replay from a time takes those after the first event ingested then (a tick's time is event time,
        // not ingest time); with none, nothing is staged anyway.
        let ticks_from = match replay.start {
            ReplayStart::Sequence(seq) => seq,
            ReplayStart::Time(ms) => {
                match crate::lake::replace::first_sequence_from(bronze, &records, ms).await {
                    Ok(first) => first.unwrap_or(u64::MAX),
                    // A compaction replaced a file since the log was read: read the log again.
                    Err(e) if read::is_not_found(&e) && passes < 3 => {
                        passes += 1;
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        let mut ticks: Vec<(u64, i64)> = records
            .iter()
            .flat_map(|r| r.ticks.iter().copied())
            .filter(|&(seq, _)| {
                seq >= ticks_from && seq <= until && !done.contains(seq) && !staged.contains(seq)
            })
            .collect();
        ticks.sort_unstable();
        let mut ticks = ticks.into_iter().peekable();
        let mut gone = None;
        // Files overlap where hosts shared the stream: a tick goes out only once no file still to be read
        // starts below it, so that the events before it in the stream are staged before it (those of a file
        // that overlaps the tick's all go before it: where hosts shared the stream, windows may close a few
        // events later than live).
        let starts: Vec<u64> = files.iter().map(|f| f.min_seq).collect();
        'files: for (index, file) in files.into_iter().enumerate() {
            let next_start = starts.get(index + 1).copied().unwrap_or(u64::MAX);
            let path = file.path.clone();
            // Nor row groups wholly before the start (by sequence and ingest time) or after the end.
            let wanted = |g: &parquet::file::metadata::RowGroupMetaData| {
                let seqs = read::i64_range(g, "_seq").map(|(a, b)| (a as u64, b as u64));
                seqs.is_none_or(|(a, b)| b >= from_seq && a <= until)
                    && read::i64_range(g, "ingest_time")
                        .is_none_or(|(_, max)| max.div_euclid(1000) >= from_ms)
            };
            // A compaction may replace the file once the log is read, before or while it is read: its rows
            // are in the merged file, which the next pass reads.
            let compacted = |e: &anyhow::Error| read::is_not_found(e) && passes < 3;
            let mut batches = match read::read_file_where(bronze, file, None, wanted).await {
                Ok(batches) => batches,
                Err(e) if compacted(&e) => {
                    gone = Some(path);
                    break;
                }
                Err(e) => return Err(e),
            };
            while let Some(batch) = batches.next().await {
                let batch = match batch.map_err(anyhow::Error::from) {
                    Ok(batch) => batch,
                    Err(e) if compacted(&e) => {
                        gone = Some(path);
                        break 'files;
                    }
                    Err(e) => return Err(e.context(format!("reading bronze file {path}"))),
                };
                let rows =
                    BronzeColumns::of(&batch).with_context(|| format!("bronze file {path}"))?;
                for i in 0..rows.len() {
                    let seq = rows.seq.value(i);
                    let ingest_ms = rows.ingest.value(i).div_euclid(1000);
                    if seq < from_seq
                        || seq > until
                        || ingest_ms < from_ms
                        || done.contains(seq)
                        || staged.contains(seq)
                    {
                        continue;
                    }
                    while let Some((tick, ms)) =
                        ticks.next_if(|&(tick, _)| tick < seq && tick < next_start)
                    {
                        stage_tick(js, &subject, &mut acks, tick, ms).await?;
                        staged.insert(tick, tick);
                    }
                    let payload = Bytes::copy_from_slice(rows.data.value(i).as_bytes());
                    stage(js, &subject, &mut acks, rows.headers(i), payload).await?;
                    staged.insert(seq, seq);
                }
            }
        }
        if gone.is_none() {
            for (tick, ms) in ticks {
                stage_tick(js, &subject, &mut acks, tick, ms).await?;
                staged.insert(tick, tick);
            }
        }
        match gone {
            None => break,
            Some(path) => {
                passes += 1;
                tracing::info!(%path, "a bronze file was compacted away while staging; reading the log again");
            }
        }
    }
    let staged = staged.count();
    for ack in acks {
        ack.await.context("staging a bronze event")?;
    }
    tracing::info!(
        staged,
        stream = staging.name,
        "bronze rows staged for the replay"
    );
    Ok(staged)
}

/// Publishes awaiting their acks while staging.
const STAGING_IN_FLIGHT: usize = 1024;

/// Publishes one message to the staging stream, with at most [`STAGING_IN_FLIGHT`] awaiting their acks.
async fn stage(
    js: &jetstream::Context,
    subject: &str,
    acks: &mut std::collections::VecDeque<jetstream::context::PublishAckFuture>,
    headers: async_nats::HeaderMap,
    payload: Bytes,
) -> Result<()> {
    let ack = js
        .publish_with_headers(subject.to_string(), headers, payload)
        .await
        .context("staging a bronze event")?;
    acks.push_back(ack);
    if acks.len() >= STAGING_IN_FLIGHT {
        acks.pop_front()
            .expect("not empty")
            .await
            .context("staging a bronze event")?;
    }
    Ok(())
}

/// Stages a tick of the live run (see `Processor::tick`) as the live pipeline read it.
async fn stage_tick(
    js: &jetstream::Context,
    subject: &str,
    acks: &mut std::collections::VecDeque<jetstream::context::PublishAckFuture>,
    seq: u64,
    ms: i64,
) -> Result<()> {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(bus::headers::ORIGINAL_SEQ, seq.to_string().as_str());
    headers.insert(bus::headers::TICK_MS, ms.to_string().as_str());
    stage(js, subject, acks, headers, Bytes::new()).await
}

/// The columns of a bronze batch a replay needs.
struct BronzeColumns<'a> {
    seq: &'a UInt64Array,
    source_id: &'a StringArray,
    sse_id: &'a StringArray,
    ingest: &'a TimestampMicrosecondArray,
    data: &'a StringArray,
    invalid_utf8: &'a BooleanArray,
}

impl<'a> BronzeColumns<'a> {
    fn of(batch: &'a RecordBatch) -> Result<Self> {
        fn column<'b, T: 'static>(batch: &'b RecordBatch, name: &str) -> Result<&'b T> {
            batch
                .column_by_name(name)
                .and_then(|c| c.as_any().downcast_ref::<T>())
                .with_context(|| format!("no column {name} of the bronze schema"))
        }
        Ok(BronzeColumns {
            seq: column(batch, "_seq")?,
            source_id: column(batch, "source_id")?,
            sse_id: column(batch, "sse_id")?,
            ingest: column(batch, "ingest_time")?,
            data: column(batch, "data")?,
            invalid_utf8: column(batch, "invalid_utf8")?,
        })
    }

    fn len(&self) -> usize {
        self.seq.len()
    }

    /// The headers row `i` is staged with: what the live pipeline read from the stream's message.
    fn headers(&self, i: usize) -> async_nats::HeaderMap {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            bus::headers::ORIGINAL_SEQ,
            self.seq.value(i).to_string().as_str(),
        );
        headers.insert(bus::headers::SOURCE_ID, self.source_id.value(i));
        let ingest_ms = self.ingest.value(i).div_euclid(1000);
        headers.insert(bus::headers::INGEST_MS, ingest_ms.to_string().as_str());
        if self.sse_id.is_valid(i) {
            headers.insert(bus::headers::SSE_ID, self.sse_id.value(i));
        }
        if self.invalid_utf8.value(i) {
            headers.insert(bus::headers::INVALID_UTF8, "replaced");
        }
        headers
    }
}

/// Removes a bronze replay's staging stream once the replay is done.
pub async fn remove_staging(js: &jetstream::Context, stream: &str) {
    if let Err(e) = js.delete_stream(stream).await {
        tracing::warn!(stream, "cannot remove the replay's staging stream: {e}");
    }
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
            bronze: None,
            in_place: None,
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
