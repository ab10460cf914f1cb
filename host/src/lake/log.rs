//! The commit log: one JSON record per committed epoch under `_weir/log/`, each created with a conditional
//! put (create-only). Creating the record is the one atomic step of a commit: files it lists are committed,
//! files it does not list are not, and the stream sequences it lists are done (never written again).
//!
//! A checkpoint (`_weir/log/checkpoint.json`) summarizes the log every so often, so a restart reads a few
//! records instead of all of them.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::{ObjectStoreExt, PutMode, PutOptions};
use serde::{Deserialize, Serialize};

use super::store::Store;

pub const LOG_DIR: &str = "_weir/log";
const CHECKPOINT: &str = "_weir/log/checkpoint.json";
/// Where long-running readers keep the fold of the log's older records (see [`CachedLog`]): outside the log's
/// directory, which holds records and the checkpoint alone.
const SAVED_FOLD: &str = "_weir/readers/log-fold.json";

/// Stream sequences as sorted, disjoint, inclusive ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ranges(pub Vec<(u64, u64)>);

impl Ranges {
    pub fn from_sorted(seqs: impl IntoIterator<Item = u64>) -> Self {
        let mut r = Ranges::default();
        for s in seqs {
            r.insert(s, s);
        }
        r
    }

    /// Adds `from..=to`, merging with neighbours.
    pub fn insert(&mut self, from: u64, to: u64) {
        if let Some(last) = self.0.last_mut()
            && last.1.saturating_add(1) >= from
            && last.0 <= from
        {
            last.1 = last.1.max(to);
            return;
        }
        self.0.push((from, to));
        self.0.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(self.0.len());
        for &(a, b) in &self.0 {
            match merged.last_mut() {
                Some(last) if last.1.saturating_add(1) >= a => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        self.0 = merged;
    }

    pub fn extend(&mut self, other: &Ranges) {
        for &(a, b) in &other.0 {
            self.insert(a, b);
        }
    }

    pub fn contains(&self, seq: u64) -> bool {
        let i = self.0.partition_point(|&(_, b)| b < seq);
        self.0.get(i).is_some_and(|&(a, _)| a <= seq)
    }

    pub fn count(&self) -> u64 {
        self.0.iter().map(|(a, b)| b - a + 1).sum()
    }

    pub fn overlaps(&self, other: &Ranges) -> bool {
        // Both sorted and disjoint: one walk, however many ranges the log has gathered.
        let (mut i, mut j) = (0, 0);
        while let (Some(&(a, b)), Some(&(c, d))) = (self.0.get(i), other.0.get(j)) {
            if a <= d && c <= b {
                return true;
            }
            if b < d {
                i += 1;
            } else {
                j += 1;
            }
        }
        false
    }

    /// Forgets everything below `floor` (sequences the stream will never deliver again).
    pub fn trim_below(&mut self, floor: u64) {
        self.0.retain(|&(_, b)| b >= floor);
        if let Some(first) = self.0.first_mut() {
            first.0 = first.0.max(floor);
        }
    }

    pub fn max(&self) -> Option<u64> {
        self.0.last().map(|r| r.1)
    }

    /// The first sequence at or after `from` that these ranges do not hold.
    pub fn first_missing_from(&self, from: u64) -> u64 {
        let i = self.0.partition_point(|&(_, b)| b < from);
        match self.0.get(i) {
            // Neighbouring ranges are merged, so the one after this range starts past `b + 1`.
            Some(&(a, b)) if a <= from => b + 1,
            _ => from,
        }
    }

    /// Whether every sequence of `other` is in these ranges.
    pub fn covers(&self, other: &Ranges) -> bool {
        other.0.iter().all(|&(a, b)| {
            let i = self.0.partition_point(|&(_, d)| d < a);
            self.0.get(i).is_some_and(|&(c, d)| c <= a && b <= d)
        })
    }

    /// The part of these ranges within `from..=to`.
    pub fn within(&self, from: u64, to: u64) -> Ranges {
        Ranges(
            self.0
                .iter()
                .filter(|&&(a, b)| a <= to && b >= from)
                .map(|&(a, b)| (a.max(from), b.min(to)))
                .collect(),
        )
    }
}

/// A file a commit added.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Relative to the lake: `<table>/dt=.../hour=.../<name>.parquet`.
    pub path: String,
    pub rows: u64,
    pub bytes: u64,
    pub min_seq: u64,
    pub max_seq: u64,
}

/// One committed epoch.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CommitRecord {
    pub format: u32,
    pub epoch: u64,
    /// The host that committed it.
    pub host: String,
    pub committed_at_ms: i64,
    /// Stream sequences this commit consumed (every one: written, dropped or quarantined).
    pub sequences: Ranges,
    /// Files per table.
    pub tables: BTreeMap<String, Vec<FileEntry>>,
    /// Where the files were written before the commit (they are moved from there to their paths).
    pub staging: String,
    /// Plugin state as of this commit (dedupe keys, open windows), restored on restart: the whole state when
    /// `state_full`, else what changed since this host's previous commit.
    pub state: Option<String>,
    #[serde(default)]
    pub state_full: bool,
    /// The plugin versions that produced the data.
    pub chain: Vec<String>,
    /// Events dropped by a rule, by `stage/rule`.
    pub dropped: BTreeMap<String, u64>,
    /// Events quarantined, by reason.
    pub quarantined: BTreeMap<String, u64>,
    /// Replaces these files (replays in place); empty for ordinary commits.
    #[serde(default)]
    pub replaces: Vec<String>,
    /// A replay in place: the table version this commit put in place of `replaces` (see `lake::replace`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay: Option<String>,
    /// A replay in place: the drops (by `stage/rule`) and quarantined events (by reason) of the rows it
    /// replaced, which `dropped` and `quarantined` no longer count.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub replaced_dropped: BTreeMap<String, u64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub replaced_quarantined: BTreeMap<String, u64>,
    /// The column types of every gold table so far (`timestamp`, `int64`, `float64`, `bool`, `string`), so
    /// a table keeps its types across restarts even when a column starts out null.
    #[serde(default)]
    pub gold_columns: BTreeMap<String, Vec<(String, String)>>,
    /// The ticks among `sequences` (messages a quiet pipeline put in its stream to move its watermark on:
    /// see `Processor::tick`), with their times in ms: events are the other sequences, and a replay from
    /// bronze, which holds no tick, stages them again from here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ticks: Vec<(u64, i64)>,
    /// Where event time had got to on the committing host (see `Processor::tick`), so that a host restarted
    /// on a quiet stream still closes the windows its state holds open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_clock: Option<EventClock>,
    /// An adoption (see `pipeline::adopt`): the host that wrote this record for `host`, gone from the
    /// pipeline, with the rows of the windows `host`'s state held open and an empty state in place of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adopted_by: Option<String>,
    /// Exclusive mode: the host whose plugin state this record's whole state carries on (a host restarted
    /// under a new name), which has no state of its own in the lake from here on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inherited_from: Option<String>,
    /// A fold of older records (see [`fold`]): what they add up to that its other fields no longer tell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folded: Option<Folded>,
}

/// What the records a fold stands for add up to (see [`fold`]): how many they were and the events they
/// consumed. Their drops and quarantines, less those of rows a replay in place replaced, are the fold's own
/// `dropped` and `quarantined`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Folded {
    pub commits: u64,
    pub events: u64,
}

/// The newest event time that moved a host's watermark, and the newest ingest time it read, in ms since the
/// epoch: a quiet pipeline's ticks carry event time on from there by the quiet since.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventClock {
    pub event_ms: i64,
    pub ingest_ms: i64,
}

impl CommitRecord {
    pub const FORMAT: u32 = 1;

    pub fn path(epoch: u64) -> String {
        format!("{LOG_DIR}/{epoch:020}.json")
    }

    pub fn files(&self) -> impl Iterator<Item = &FileEntry> {
        self.tables.values().flatten()
    }

    /// Where this commit staged `path` (a file's, or `state.bin`) before moving it into place.
    pub fn staged(&self, path: &str) -> String {
        format!("{}/{path}", self.staging)
    }

    /// The commits this record stands for: itself, or those a fold replaced.
    pub fn commits(&self) -> u64 {
        self.folded.map_or(1, |f| f.commits)
    }

    /// The events among the sequences it consumed (the others are ticks).
    pub fn events(&self) -> u64 {
        match self.folded {
            Some(f) => f.events,
            None => self
                .sequences
                .count()
                .saturating_sub(self.ticks.len() as u64),
        }
    }
}

/// Adds what `record` dropped (by `stage/rule`) and quarantined (by reason) to running totals, less what
/// the rows a replay in place replaced had counted.
pub fn add_counts(
    record: &CommitRecord,
    dropped: &mut BTreeMap<String, u64>,
    quarantined: &mut BTreeMap<String, u64>,
) {
    for (add, less, total) in [
        (&record.dropped, &record.replaced_dropped, &mut *dropped),
        (
            &record.quarantined,
            &record.replaced_quarantined,
            &mut *quarantined,
        ),
    ] {
        for (k, v) in add {
            *total.entry(k.clone()).or_default() += v;
        }
        for (k, v) in less {
            let n = total.entry(k.clone()).or_default();
            *n = n.saturating_sub(*v);
        }
    }
}

/// Every stream sequence these records consumed.
pub fn committed(records: &[CommitRecord]) -> Ranges {
    let mut committed = Ranges::default();
    for r in records {
        committed.extend(&r.sequences);
    }
    committed
}

/// Adds the gold columns of `more` that `known` lacks. Columns are only ever added, and every record lists
/// all of them so far, but a compaction or a replay in place may have written its list before a pipeline's
/// commit just before it: readers take the union.
pub fn merge_gold_columns(
    known: &mut BTreeMap<String, Vec<(String, String)>>,
    more: &BTreeMap<String, Vec<(String, String)>>,
) {
    for (table, columns) in more {
        let known = known.entry(table.clone()).or_default();
        for column in columns {
            if !known.iter().any(|(c, _)| *c == column.0) {
                known.push(column.clone());
            }
        }
    }
}

/// Files a later record replaced (a replay in place): no longer part of their tables.
pub fn replaced_paths(records: &[CommitRecord]) -> std::collections::BTreeSet<&str> {
    records
        .iter()
        .flat_map(|r| r.replaces.iter().map(String::as_str))
        .collect()
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The last epoch the checkpoint covers.
    pub epoch: u64,
    /// Sequences committed up to `epoch`.
    pub sequences: Ranges,
    #[serde(default)]
    pub gold_columns: BTreeMap<String, Vec<(String, String)>>,
    /// Per host, the epoch of its last commit with the whole state (restores start there).
    #[serde(default)]
    pub bases: BTreeMap<String, u64>,
}

/// The log as read: records since the checkpoint, and everything committed.
#[derive(Debug, Default)]
pub struct LogState {
    pub checkpoint: Checkpoint,
    pub records: Vec<CommitRecord>,
    pub committed: Ranges,
    pub last_epoch: u64,
}

/// Why a record could not be created.
#[derive(Debug)]
pub enum CreateOutcome {
    Created,
    /// Another record holds this epoch (another host, or this one before a crash).
    Taken(Box<CommitRecord>),
}

/// A commit-log failure that waiting cannot mend, so the readers and writers of the log stop at once instead of
/// retrying for ever: an object in the log that is not a record Weir wrote, or a store without the
/// conditional writes the protocol rests on.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unrecoverable(pub String);

/// The error for a log object `path` that does not parse.
fn corrupt(what: &str, path: &impl std::fmt::Display, e: serde_json::Error) -> anyhow::Error {
    Unrecoverable(format!(
        "{what} {path} is not valid ({e}). Weir writes each one whole, with fsync on local disk, so an empty \
         or cut-short one is a write that never completed: move it out of the lake and start again (its \
         events are read again from the stream); anything else was changed by hand"
    ))
    .into()
}

/// Records after `epoch` (all hosts), oldest first.
pub async fn records_after(store: &Store, epoch: u64) -> Result<Vec<CommitRecord>> {
    let mut records = load(store, Some(epoch)).await?;
    records.retain(|r| r.epoch > epoch);
    Ok(records)
}

/// The record of `epoch`.
pub async fn record(store: &Store, epoch: u64) -> Result<CommitRecord> {
    let path = store.path(&CommitRecord::path(epoch));
    let bytes = match store.store.get(&path).await {
        Ok(got) => got.bytes().await?,
        // Not there now, not there later: waiting cannot help.
        Err(object_store::Error::NotFound { .. }) => {
            return Err(
                Unrecoverable(format!("commit record {epoch} is missing from the log")).into(),
            );
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read commit record {epoch}")),
    };
    serde_json::from_slice(&bytes).map_err(|e| corrupt("the commit record", &path, e))
}

/// Every record (all hosts, not just since the last checkpoint), oldest first.
pub async fn all_records(store: &Store) -> Result<Vec<CommitRecord>> {
    load(store, None).await
}

/// The commit log as a reader last saw it (`weir run` for its API, `weir lake ls` and `query`): each look
/// reads only the records created since, as compaction's view does, instead of one request per record of
/// the whole log.
///
/// A pipeline commits every few seconds for months, so all but the newest [`CachedLog::KEEP`] records are
/// folded into one (see [`fold`]): what a reader asks of the log (the files of a table, its gold columns,
/// the sequences committed, what `weir lake ls` counts) stays the same, and its size follows the lake's
/// live files, not its age.
///
/// `weir run` also saves each fold in the lake (see [`CachedLog::keep_up`]), so that the next reader to
/// start reads it and the records after it, not a month of records one request each. The records it stands
/// for never change (the log only grows, epoch after epoch), so any saved fold is right for its epoch; one
/// whose epoch's record in the log has another commit time (a log written again from scratch) is ignored. A reader that met a gap
/// between epochs (a store that left a record out of a listing) saves nothing, so as not to hand the gap
/// on; nor does it save a fold of more than [`CachedLog::SAVED_FOLD_MAX_FILES`] files.
#[derive(Debug, Default)]
pub struct CachedLog {
    seen: tokio::sync::Mutex<Arc<Vec<CommitRecord>>>,
    /// Whether a gap between epochs was met.
    gap: std::sync::atomic::AtomicBool,
    /// A reader that only reads (a command that prints and exits): it saves no fold.
    read_only: bool,
}

impl CachedLog {
    /// The records kept as they are, newest last.
    pub const KEEP: usize = 256;

    /// How often a running pipeline reads the log's new records (see [`CachedLog::keep_up`]).
    pub const KEEP_UP_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

    /// The most file entries a saved fold holds (~15 MB of JSON): a lake whose small files are never
    /// compacted lists millions after a month, too many to write again at every fold.
    pub const SAVED_FOLD_MAX_FILES: usize = 100_000;

    /// Records read between two folds: a first read of a long log without a saved fold (a month of
    /// records, ~15 kB each in memory) holds these and the kept ones at most, not the whole log.
    const READ_BETWEEN_FOLDS: usize = 1024;

    /// A reader that saves no fold in the lake: a command that reads the log once (`weir lake ls`) would
    /// write to a lake it only reads, and exit before the write is done.
    pub fn read_only() -> Self {
        CachedLog {
            read_only: true,
            ..Default::default()
        }
    }

    /// The records (all hosts), oldest first, as of now: the older ones folded into the first. New records
    /// are read [`CachedLog::READ_BETWEEN_FOLDS`] at a time, folding between parts.
    pub async fn records(&self, store: &Store) -> Result<Arc<Vec<CommitRecord>>> {
        let mut seen = self.seen.lock().await;
        let after = match seen.last() {
            Some(last) => Some(last.epoch),
            None => saved_fold(store).await.map(|folded| {
                let after = folded.epoch;
                Arc::make_mut(&mut seen).push(folded);
                after
            }),
        };
        let mut folded = false;
        // A part that fails leaves the parts before it in place (whole, in order), and the next look goes on
        // from there; a fold made meanwhile is saved all the same.
        let read = async {
            for paths in list(store, after).await?.chunks(Self::READ_BETWEEN_FOLDS) {
                let mut newer = fetch(store, paths.to_vec()).await?;
                newer.retain(|r| after.is_none_or(|after| r.epoch > after));
                // Epochs follow one another from 1 (a log that lost records was handled by hand).
                let mut last = seen.last().map_or(0, |r| r.epoch);
                for record in &newer {
                    if record.epoch != last + 1 {
                        tracing::warn!(
                            "the commit log lists epoch {} after {last}: not saving its fold for other readers",
                            record.epoch
                        );
                        self.gap.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    last = record.epoch;
                }
                let records = Arc::make_mut(&mut seen);
                records.extend(newer);
                // Past twice the records kept, down to them: a fold's work is spread over the records that
                // led to it.
                if records.len() > 2 * Self::KEEP {
                    fold(records, Self::KEEP);
                    folded = true;
                }
            }
            anyhow::Ok(())
        }
        .await;
        if folded
            && !self.read_only
            && seen[0].files().count() <= Self::SAVED_FOLD_MAX_FILES
            && !self.gap.load(std::sync::atomic::Ordering::Relaxed)
        {
            // In the background: a query waits for no write.
            let (store, fold) = (store.clone(), seen[0].clone());
            tokio::spawn(async move { save_fold(&store, fold).await });
        }
        read?;
        Ok(Arc::clone(&seen))
    }

    /// Reads the log's new records now and then every `every` until `stop`, so that the fold saved in the
    /// lake stays within a few hundred records of the log's end, whether or not anything queries: readers
    /// that start from it (`weir lake ls` and `query`, a restarted API, compaction) then read those, not
    /// every record since the last gold query. `weir run` runs it for its API (at start, not in the first
    /// query for committed rows); a host without an API keeps no log in memory.
    pub async fn keep_up(
        self: Arc<Self>,
        store: Store,
        every: std::time::Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            if let Err(e) = self.records(&store).await {
                tracing::debug!("reading the commit log's new records: {e:#}");
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.changed() => return,
            }
        }
    }
}

/// A saved fold (see [`CachedLog`]).
#[derive(Serialize, Deserialize)]
struct SavedFold {
    format: u32,
    folded: CommitRecord,
}

impl SavedFold {
    /// 2: a fold carries the counts of the records it stands for (see [`Folded`]); those of format 1 lack
    /// them, so `weir lake ls` would miss the events, drops and quarantines of every folded record.
    const FORMAT: u32 = 2;
}

async fn save_fold(store: &Store, folded: CommitRecord) {
    let saved = SavedFold {
        format: SavedFold::FORMAT,
        folded,
    };
    let written = async {
        // Megabytes of JSON: off the runtime's threads.
        let body = tokio::task::spawn_blocking(move || serde_json::to_vec(&saved)).await??;
        store
            .store
            .put(&store.path(SAVED_FOLD), body.into())
            .await?;
        anyhow::Ok(())
    };
    // Only a cache: a reader without the right to write (read-only credentials) reads the whole log at start.
    if let Err(e) = written.await {
        tracing::warn!(
            "cannot save the commit log's fold to {SAVED_FOLD}: the next reader to start reads the whole log \
             ({e:#})"
        );
    }
}

/// The saved fold, when there is one that stands for this log (its epoch's record has its commit time).
pub(crate) async fn saved_fold(store: &Store) -> Option<CommitRecord> {
    let read = async {
        let bytes = match store.store.get(&store.path(SAVED_FOLD)).await {
            Ok(got) => got.bytes().await?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let saved: SavedFold = serde_json::from_slice(&bytes)?;
        anyhow::ensure!(
            saved.format == SavedFold::FORMAT,
            "it is of format {}, not {} (saved by another version of Weir)",
            saved.format,
            SavedFold::FORMAT
        );
        let epoch = saved.folded.epoch;
        let committed_at_ms = record(store, epoch).await?.committed_at_ms;
        anyhow::ensure!(
            committed_at_ms == saved.folded.committed_at_ms,
            "epoch {epoch} of this commit log was committed at another time: the fold is another log's"
        );
        anyhow::Ok(Some(saved.folded))
    };
    read.await.unwrap_or_else(|e| {
        tracing::warn!("not using {SAVED_FOLD} ({e:#}): reading the whole commit log");
        None
    })
}

/// Folds all but the newest `keep` of `records` into one record, the first, that stands for them to a
/// reader: the files of each table that no later record replaced (a table keeps its name when none is left),
/// their gold columns, the sequences the pipeline's own commits consumed, and the counts `weir lake ls`
/// adds up (see [`Folded`]). The rest of a record (its host, state, chain) is not kept. A record that
/// replaces files only ever replaces older ones, so once it is folded, the files it names are gone from the
/// fold, and its list can go too.
pub fn fold(records: &mut Vec<CommitRecord>, keep: usize) {
    if records.len() <= keep + 1 {
        return;
    }
    let folded: Vec<CommitRecord> = records.drain(..records.len() - keep).collect();
    let mut into = CommitRecord::default();
    let mut counts = Folded::default();
    for record in folded {
        counts.commits += record.commits();
        counts.events += record.events();
        add_counts(&record, &mut into.dropped, &mut into.quarantined);
        if !record.replaces.is_empty() {
            let gone: std::collections::HashSet<&str> =
                record.replaces.iter().map(String::as_str).collect();
            for files in into.tables.values_mut() {
                files.retain(|f| !gone.contains(f.path.as_str()));
            }
        }
        for (table, files) in record.tables {
            into.tables.entry(table).or_default().extend(files);
        }
        merge_gold_columns(&mut into.gold_columns, &record.gold_columns);
        if record.replay.is_none() {
            into.sequences.extend(&record.sequences);
        }
        into.format = record.format;
        into.epoch = record.epoch;
        into.committed_at_ms = record.committed_at_ms;
    }
    into.folded = Some(counts);
    records.insert(0, into);
}

/// The records listed after the one of epoch `after` (all of them when `None`), in the order of their names.
async fn load(store: &Store, after: Option<u64>) -> Result<Vec<CommitRecord>> {
    fetch(store, list(store, after).await?).await
}

/// The paths of the records listed after the one of epoch `after` (all of them when `None`), sorted.
async fn list(store: &Store, after: Option<u64>) -> Result<Vec<object_store::path::Path>> {
    let dir = store.path(LOG_DIR);
    let listing = match after {
        Some(epoch) => store
            .store
            .list_with_offset(Some(&dir), &store.path(&CommitRecord::path(epoch))),
        None => store.store.list(Some(&dir)),
    };
    let mut paths: Vec<object_store::path::Path> = listing
        .map_ok(|m| m.location)
        .try_collect()
        .await
        .context("cannot list the commit log")?;
    paths.retain(|p| {
        p.filename()
            .is_some_and(|f| f != "checkpoint.json" && f.ends_with(".json"))
    });
    paths.sort();
    Ok(paths)
}

/// The records at `paths`, in their order.
async fn fetch(store: &Store, paths: Vec<object_store::path::Path>) -> Result<Vec<CommitRecord>> {
    // Many at a time: a remote store answers each GET in tens of milliseconds, and a long log has
    // thousands of records (`verify`, the first read of a reader without a saved fold).
    futures::stream::iter(paths)
        .map(|path| async move {
            let bytes = store.store.get(&path).await?.bytes().await?;
            serde_json::from_slice(&bytes).map_err(|e| corrupt("the commit record", &path, e))
        })
        .buffered(RECORD_READS)
        .try_collect()
        .await
}

/// Commit records read at once.
const RECORD_READS: usize = 32;

pub async fn read(store: &Store) -> Result<LogState> {
    let mut state = LogState::default();
    match store.store.get(&store.path(CHECKPOINT)).await {
        Ok(got) => {
            let bytes = got.bytes().await?;
            state.checkpoint = serde_json::from_slice(&bytes)
                .map_err(|e| corrupt("the commit-log checkpoint", &store.path(CHECKPOINT), e))?;
        }
        Err(object_store::Error::NotFound { .. }) => {}
        Err(e) => return Err(e).context("cannot read the commit-log checkpoint"),
    }
    state.committed = state.checkpoint.sequences.clone();
    state.last_epoch = state.checkpoint.epoch;
    for record in records_after(store, state.checkpoint.epoch).await? {
        state.committed.extend(&record.sequences);
        state.last_epoch = state.last_epoch.max(record.epoch);
        state.records.push(record);
    }
    Ok(state)
}

/// Creates the record for `record.epoch`, unless one exists.
pub async fn create(store: &Store, record: &CommitRecord) -> Result<CreateOutcome> {
    let path = store.path(&CommitRecord::path(record.epoch));
    let body = Bytes::from(serde_json::to_vec_pretty(record)?);
    let options = PutOptions {
        mode: PutMode::Create,
        ..PutOptions::default()
    };
    match store.store.put_opts(&path, body.into(), options).await {
        Ok(_) => Ok(CreateOutcome::Created),
        Err(object_store::Error::AlreadyExists { .. })
        | Err(object_store::Error::Precondition { .. }) => {
            let bytes = store.store.get(&path).await?.bytes().await?;
            let existing: CommitRecord = serde_json::from_slice(&bytes)
                .map_err(|e| corrupt("the commit record", &path, e))?;
            Ok(CreateOutcome::Taken(Box::new(existing)))
        }
        Err(object_store::Error::NotImplemented { .. }) => Err(Unrecoverable(
            "the lake's store does not support conditional writes, which the commit protocol needs; use a \
             store that does (local disk, S3 or an S3-compatible store with If-None-Match, GCS, Azure)"
                .into(),
        )
        .into()),
        Err(e) => Err(e).context("cannot write the commit record"),
    }
}

/// Checks that the store refuses a second create of the same object, as the commit protocol needs: a store
/// that ignored `If-None-Match` (some S3-compatible ones do, silently) would let two hosts' commit records of
/// one epoch overwrite each other, and the sequences of the first leave the log though their messages were
/// acked. Writes and deletes an object under `_weir/probe/`.
pub async fn check_conditional_writes(store: &Store, host: &str) -> Result<()> {
    let path = store.path(&format!(
        "_weir/probe/{host}-{:016x}",
        rand::random::<u64>()
    ));
    let create = || {
        let options = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        store
            .store
            .put_opts(&path, Bytes::from_static(b"probe").into(), options)
    };
    create()
        .await
        .context("cannot write to the lake (a probe of its conditional writes)")?;
    let second = create().await;
    let _ = store.store.delete(&path).await;
    match second {
        Err(object_store::Error::AlreadyExists { .. })
        | Err(object_store::Error::Precondition { .. }) => Ok(()),
        Ok(_) | Err(object_store::Error::NotImplemented { .. }) => Err(Unrecoverable(format!(
            "the lake's store at {} accepted a second create of the same object: it ignores conditional \
             writes (If-None-Match), which the commit protocol needs to keep two commits from overwriting \
             each other. Use a store that honours them (local disk, AWS S3, MinIO, SeaweedFS, R2, GCS, \
             Azure)",
            store.url
        ))
        .into()),
        Err(e) => Err(e).context("cannot write to the lake (a probe of its conditional writes)"),
    }
}

/// Writes a checkpoint covering the log up to `epoch`.
pub async fn checkpoint(store: &Store, checkpoint: &Checkpoint) -> Result<()> {
    let body = Bytes::from(serde_json::to_vec(checkpoint)?);
    store
        .store
        .put(&store.path(CHECKPOINT), body.into())
        .await
        .context("cannot write the commit-log checkpoint")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The record of `epoch`: ten sequences, in one silver file.
    fn with_a_file(epoch: u64) -> CommitRecord {
        CommitRecord {
            epoch,
            sequences: Ranges(vec![(epoch * 10, epoch * 10 + 9)]),
            tables: [(
                "silver".to_string(),
                vec![FileEntry {
                    path: format!("silver/{epoch}"),
                    rows: 1,
                    bytes: 1,
                    min_seq: epoch * 10,
                    max_seq: epoch * 10 + 9,
                }],
            )]
            .into(),
            ..Default::default()
        }
    }

    /// The fold saved in the background, once it is there (`None` after ten seconds).
    async fn saved_soon(store: &Store) -> Option<CommitRecord> {
        tokio::time::timeout(std::time::Duration::from_secs(10), async {
            loop {
                match saved_fold(store).await {
                    Some(saved) => break saved,
                    None => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
                }
            }
        })
        .await
        .ok()
    }

    /// The live silver files the log lists, by path.
    fn live(records: &[CommitRecord]) -> Vec<String> {
        crate::lake::read::files_in_range(records, "silver", i64::MIN, i64::MAX)
            .into_iter()
            .map(|f| f.path.clone())
            .collect()
    }

    /// The cached log gives every record, as the whole log does, reading only the new ones each time.
    #[test]
    fn a_cached_log_keeps_up_with_the_log() {
        crate::lake::testing::on_memory_store(|store| async move {
            let record = |epoch: u64| CommitRecord {
                epoch,
                sequences: Ranges(vec![(epoch * 10, epoch * 10 + 9)]),
                ..Default::default()
            };
            let log = CachedLog::default();
            assert!(log.records(&store).await.unwrap().is_empty());
            for epoch in 1..=3 {
                create(&store, &record(epoch)).await.unwrap();
            }
            let first = log.records(&store).await.unwrap();
            assert_eq!(*first, all_records(&store).await.unwrap());
            for epoch in 4..=5 {
                create(&store, &record(epoch)).await.unwrap();
            }
            let second = log.records(&store).await.unwrap();
            assert_eq!(*second, all_records(&store).await.unwrap());
            assert_eq!(second.len(), 5);
            // A reader still holding the earlier view keeps it.
            assert_eq!(first.len(), 3);
        });
    }

    /// A reader that starts after another saved its fold reads the fold and the records after it (not the
    /// records the fold stands for), and answers as the first does; a saved fold of another log is ignored.
    #[test]
    fn a_new_reader_starts_from_the_saved_fold() {
        crate::lake::testing::on_memory_store(|store| async move {
            let record = |epoch: u64| CommitRecord {
                committed_at_ms: epoch as i64 * 1000,
                ..with_a_file(epoch)
            };
            let last = 2 * CachedLog::KEEP as u64 + 10;
            for epoch in 1..=last {
                create(&store, &record(epoch)).await.unwrap();
            }
            let first = CachedLog::default().records(&store).await.unwrap();
            assert_eq!(first.len(), CachedLog::KEEP + 1);
            assert_eq!(first[0].files().count(), last as usize - CachedLog::KEEP);
            // Saved in the background.
            let saved = saved_soon(&store).await.expect("the fold is saved");
            assert_eq!(saved, first[0]);

            // A record the fold stands for, gone, is not missed: it is not read.
            let gone = store.path(&CommitRecord::path(1));
            store.store.delete(&gone).await.unwrap();
            let second = CachedLog::default().records(&store).await.unwrap();
            assert_eq!(*second, *first);

            // The fold of another log (one written again from scratch) is not taken for this one's.
            let other = SavedFold {
                format: SavedFold::FORMAT,
                folded: CommitRecord {
                    committed_at_ms: 1,
                    ..saved.clone()
                },
            };
            let body = Bytes::from(serde_json::to_vec(&other).unwrap());
            store
                .store
                .put(&store.path(SAVED_FOLD), body.into())
                .await
                .unwrap();
            assert!(saved_fold(&store).await.is_none());
            let third = CachedLog::default().records(&store).await.unwrap();
            assert_eq!(
                third[0].files().count(),
                last as usize - 1 - CachedLog::KEEP
            );
            // Nor does a reader that found epoch 1 gone save its fold: the other log's stays.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            assert!(saved_fold(&store).await.is_none());
        });
    }

    /// A running pipeline's reader saves the fold as the log grows, with nothing querying it, so that a
    /// reader starting from the fold (`weir lake ls`) reads few records and tells what the whole log does;
    /// and it stops when asked.
    #[test]
    fn a_kept_up_log_saves_its_fold_as_it_grows() {
        crate::lake::testing::on_memory_store(|store| async move {
            let record = |epoch: u64| CommitRecord {
                epoch,
                committed_at_ms: epoch as i64,
                sequences: Ranges(vec![(epoch * 10, epoch * 10 + 9)]),
                dropped: [("filter/bots".to_string(), 1)].into(),
                ..Default::default()
            };
            let (stop_tx, stop) = tokio::sync::watch::channel(false);
            let every = std::time::Duration::from_millis(10);
            let keeper =
                tokio::spawn(Arc::new(CachedLog::default()).keep_up(store.clone(), every, stop));
            let last = 2 * CachedLog::KEEP as u64 + 1;
            for epoch in 1..=last {
                create(&store, &record(epoch)).await.unwrap();
            }
            let saved = saved_soon(&store)
                .await
                .expect("the fold is saved with nothing asking for the log");
            assert_eq!(saved.commits(), saved.epoch);
            let mut from_fold = vec![saved.clone()];
            from_fold.extend(records_after(&store, saved.epoch).await.unwrap());
            let whole = all_records(&store).await.unwrap();
            let summary = crate::lake::read::summarize;
            assert_eq!(summary(&from_fold), summary(&whole));
            assert_eq!(summary(&from_fold).dropped["filter/bots"], last);
            stop_tx.send(true).unwrap();
            tokio::time::timeout(std::time::Duration::from_secs(10), keeper)
                .await
                .expect("the keeper stops when asked")
                .unwrap();
        });
    }

    /// A first read of a log without a saved fold folds as it reads, so it never holds the whole log, and
    /// tells what the whole log does.
    #[test]
    fn a_first_read_of_a_long_log_folds_as_it_goes() {
        crate::lake::testing::on_memory_store(|store| async move {
            let record = |epoch: u64| CommitRecord {
                quarantined: [("late".to_string(), epoch % 3)].into(),
                ..with_a_file(epoch)
            };
            let last = 2 * CachedLog::READ_BETWEEN_FOLDS as u64 + 100;
            for epoch in 1..=last {
                create(&store, &record(epoch)).await.unwrap();
            }
            let read = CachedLog::read_only().records(&store).await.unwrap();
            let whole = all_records(&store).await.unwrap();
            assert_eq!(
                read.len(),
                100 + CachedLog::KEEP + 1,
                "folded after each part"
            );
            let summary = crate::lake::read::summarize;
            assert_eq!(summary(&read), summary(&whole));
            assert_eq!(live(&read), live(&whole));
            // A read-only reader saves nothing.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            assert!(saved_fold(&store).await.is_none());
            // Another reader saves its last fold.
            let saving = CachedLog::default().records(&store).await.unwrap();
            let saved = saved_soon(&store).await.expect("the fold is saved");
            assert_eq!(saved, saving[0]);
            // A reader that met a gap where two parts meet saves nothing.
            let gap = CachedLog::READ_BETWEEN_FOLDS as u64 + 1;
            for path in [CommitRecord::path(gap), SAVED_FOLD.to_string()] {
                store.store.delete(&store.path(&path)).await.unwrap();
            }
            let gapped = CachedLog::default().records(&store).await.unwrap();
            assert_eq!(
                summary(&gapped),
                summary(&all_records(&store).await.unwrap())
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            assert!(saved_fold(&store).await.is_none());
        });
    }

    /// A folded log answers as the whole log does: the same live files per table, gold columns, sequences
    /// and summary (`weir lake ls`); replaced files gone whether the replacing record was folded or not.
    #[test]
    fn a_folded_log_answers_as_the_whole_log() {
        let file = |path: &str| FileEntry {
            path: path.into(),
            rows: 1,
            bytes: 1,
            min_seq: 0,
            max_seq: 0,
        };
        let record = |epoch: u64| CommitRecord {
            epoch,
            sequences: Ranges(vec![(epoch * 10, epoch * 10 + 9)]),
            tables: [("silver".to_string(), vec![file(&format!("silver/{epoch}"))])].into(),
            gold_columns: [(
                "gold".to_string(),
                vec![(format!("c{}", epoch % 3), "Int64".to_string())],
            )]
            .into(),
            ..Default::default()
        };
        let mut records: Vec<CommitRecord> = (1..=20).map(record).collect();
        // Epoch 8 compacts the files of 1 to 4; epoch 18 those of 5 to 7 (kept as they are below).
        records[7].replaces = (1..=4).map(|e| format!("silver/{e}")).collect();
        records[7]
            .tables
            .get_mut("silver")
            .unwrap()
            .push(file("silver/c1"));
        records[17].replaces = (5..=7).map(|e| format!("silver/{e}")).collect();
        records[17]
            .tables
            .get_mut("silver")
            .unwrap()
            .push(file("silver/c2"));
        records[3].replay = Some("v2".into());
        // Counts: drops and quarantines, ticks, and a replay in place that takes some back.
        for (i, r) in records.iter_mut().enumerate() {
            r.dropped = [("filter/bots".to_string(), i as u64)].into();
            r.quarantined = [(format!("reason{}", i % 2), 2)].into();
            if i % 4 == 0 {
                r.ticks = vec![(r.sequences.0[0].0, 0)];
            }
        }
        records[3].replaced_dropped = [("filter/bots".to_string(), 4)].into();
        records[3].replaced_quarantined = [("reason1".to_string(), 3)].into();
        records[16].replaced_quarantined = [("reason0".to_string(), 1)].into();
        // More taken back than counted so far (the total stays at zero), and a reason only taken back.
        records[2].replaced_dropped = [("filter/bots".to_string(), 100)].into();
        records[5].replaced_quarantined = [("only_replaced".to_string(), 5)].into();
        // A table whose one file the compaction of epoch 8 replaced.
        records[1]
            .tables
            .insert("gold_x".to_string(), vec![file("gold_x/2")]);
        records[7].replaces.push("gold_x/2".to_string());
        let summary = crate::lake::read::summarize;
        let columns = |records: &[CommitRecord]| {
            let mut known = BTreeMap::new();
            for r in records {
                merge_gold_columns(&mut known, &r.gold_columns);
            }
            known
        };
        let sequences = |records: &[CommitRecord]| {
            let mut all = Ranges::default();
            for r in records.iter().filter(|r| r.replay.is_none()) {
                all.extend(&r.sequences);
            }
            all
        };
        let whole = records.clone();
        fold(&mut records, 5);
        assert_eq!(records.len(), 6);
        assert_eq!(records[0].epoch, 15);
        assert_eq!(live(&records), live(&whole));
        assert_eq!(columns(&records), columns(&whole));
        assert_eq!(sequences(&records), sequences(&whole));
        assert_eq!(summary(&records), summary(&whole));
        assert_eq!(summary(&records).tables["gold_x"].files, 0);
        assert_eq!(records[0].commits(), 15);
        assert!(
            !sequences(&records).contains(40),
            "a replay's sequences are not the pipeline's"
        );
        // Folded again, past the second compaction.
        fold(&mut records, 1);
        assert_eq!(live(&records), live(&whole));
        assert_eq!(summary(&records), summary(&whole));
        assert_eq!(summary(&records).commits, 20);
        assert_eq!(records[0].tables["silver"].len(), live(&whole).len() - 1);
    }

    #[test]
    fn ranges_merge_and_answer() {
        let mut r = Ranges::default();
        r.insert(5, 7);
        r.insert(1, 2);
        r.insert(3, 4);
        r.insert(10, 10);
        assert_eq!(r.0, [(1, 7), (10, 10)]);
        assert!(r.contains(1) && r.contains(7) && r.contains(10));
        assert!(!r.contains(8) && !r.contains(0) && !r.contains(11));
        assert_eq!(r.count(), 8);
        assert!(r.overlaps(&Ranges(vec![(8, 10)])));
        assert!(!r.overlaps(&Ranges(vec![(8, 9)])));
        r.trim_below(3);
        assert_eq!(r.0, [(3, 7), (10, 10)]);
        assert_eq!(Ranges::from_sorted([1, 2, 3, 5]).0, [(1, 3), (5, 5)]);
        assert!(r.covers(&Ranges(vec![(3, 5), (10, 10)])));
        assert!(!r.covers(&Ranges(vec![(6, 8)])));
        assert_eq!(r.first_missing_from(1), 1);
        assert_eq!(r.first_missing_from(3), 8);
        assert_eq!(r.first_missing_from(8), 8);
        assert_eq!(r.first_missing_from(10), 11);
        assert_eq!(Ranges::default().first_missing_from(5), 5);
        assert_eq!(r.within(4, 10).0, [(4, 7), (10, 10)]);
    }
}
