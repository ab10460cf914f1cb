//! Compaction: the many small files of a table's partition merged into a few large ones, in one commit.
//!
//! A pipeline that commits every few seconds writes a file per table and partition per commit: hundreds of
//! small files an hour, which every engine has to open one by one. Compaction reads the files of partitions
//! whose hour is long enough past, copies their rows (never recomputes them), in stream order, into files of
//! up to `target_bytes`, and swaps them in the way a replay in place does (see `lake::replace`): the new
//! files are staged, one commit record lists them and the files they replace (the one atomic step), then
//! they are moved in and the old ones deleted. Every table holds exactly the rows it held, in fewer files.
//!
//! The live pipeline runs on meanwhile: the record consumes no stream sequences, and the pipeline's later
//! commits only add files. A late event that lands in a compacted partition adds a file there, which the
//! next compaction merges too.
//!
//! A run that crashes leaves its staging (`_weir/staging/compact/<run>/`) with a marker object in it; the
//! next run finishes what the marker's run committed (moves and deletes are idempotent) and deletes what it
//! did not, once the marker has gone unchanged long enough not to belong to a run still going (a run
//! touches it after every file it stages). The commit log decides between a run that only stalled (a store
//! away for an hour, a paused process) and the cleaner: before deleting, the cleaner writes a record of the
//! run's staging that commits nothing, and a run creates its own record only while no record of its
//! staging is in the log. Whichever record comes first wins: the other side sees it and stands back. (All
//! the hosts that compact one lake are to run versions from 2026-12-07 on, which decide this way.)
//!
//! A file that cannot be merged (gone because another run replaced it, unreadable, or holding other rows
//! than its commit says) leaves its partition as it is, with a warning, and the run goes on with the others.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use arrow_array::RecordBatch;
use arrow_schema::{Schema, SchemaRef};
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::log::{self, CommitRecord, FileEntry};
use super::spill::{FileData, SpillSink};
use super::store::Store;
use super::{crash, files, read, retry, retry_log, retry_upload};

/// Where runs stage their files: `<STAGING>/<run>/`.
const STAGING: &str = "_weir/staging/compact";
/// The object that marks a run's staging as not finished yet (deleted last).
const MARKER: &str = "_unfinished";
/// The create-only object with which versions before 2026-12-07 claimed a run's staging (see
/// `finish_interrupted`).
const LEGACY_CLAIM: &str = "_claim";
/// The `host` of compaction records.
pub const HOST: &str = "compact";
/// Staging of a run with no commit record is deleted once its marker is this old (a run touches its marker
/// after every file it stages, so a younger one may be running).
const ABANDONED_AFTER: Duration = Duration::from_secs(3600);

/// What to compact.
#[derive(Clone, Debug)]
pub struct Options {
    /// Only partitions whose hour ended at least this long ago: late events still land in recent ones.
    pub min_age: Duration,
    /// Also the partitions whose hour is not over (after a backfill; files added later are merged by a later
    /// run).
    pub include_current: bool,
    /// The size of the merged files (by the bytes of the files merged into them); files of half of it or
    /// more are left as they are.
    pub target_bytes: u64,
    /// The fewest small files of a partition worth merging.
    pub min_files: usize,
    /// Only these tables (all when empty).
    pub tables: Vec<String>,
    pub concurrency: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            min_age: Duration::from_secs(3600),
            include_current: false,
            target_bytes: 128 << 20,
            min_files: 4,
            tables: Vec::new(),
            concurrency: 8,
        }
    }
}

/// One merged file and what went into it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Merge {
    pub table: String,
    pub path: String,
    pub files: usize,
    pub rows: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
}

/// What a run did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Report {
    /// The epoch of its commit record (none when there was nothing to merge).
    pub epoch: Option<u64>,
    pub merged: Vec<Merge>,
    /// Interrupted runs this one finished.
    pub finished: usize,
    /// Partitions left as they were, and why.
    pub skipped: Vec<String>,
}

/// What compaction knows of the commit log: the visible files by table and partition, the gold columns so
/// far, and the compaction records that may still be unfinished. A lake commits every few seconds, so a
/// long-running pipeline keeps one and reads only the records created since it last looked, instead of the
/// whole log at every run; and it starts from the fold of the log `weir run` saved (see `log::CachedLog`),
/// when there is one, instead of reading every record.
#[derive(Debug, Default)]
pub struct LogView {
    read_to: u64,
    files: BTreeMap<(String, String), Vec<FileEntry>>,
    gold_columns: BTreeMap<String, Vec<(String, String)>>,
    /// Compaction records read since the last run (finished by now, or to be finished).
    compactions: Vec<CommitRecord>,
    /// The epoch of the saved fold the view started from: the compaction records up to it were not read
    /// (`finish_interrupted` reads them when a run's staging lacks its record).
    folded_through: Option<u64>,
}

impl LogView {
    /// Reads the records created since the last look (the first time, the saved fold and the records after
    /// it, or the whole log).
    pub async fn refresh(&mut self, store: &Store) -> Result<()> {
        if self.read_to == 0
            && let Some(folded) = log::saved_fold(store).await
        {
            self.folded_through = Some(folded.epoch);
            self.absorb(folded);
        }
        for record in log::records_after(store, self.read_to).await? {
            self.absorb(record);
        }
        Ok(())
    }

    fn absorb(&mut self, record: CommitRecord) {
        for path in &record.replaces {
            if let Some(key) = partition_of(path)
                && let Some(files) = self.files.get_mut(&key)
            {
                files.retain(|f| f.path != *path);
                if files.is_empty() {
                    self.files.remove(&key);
                }
            }
        }
        for f in record.files() {
            if let Some(key) = partition_of(&f.path) {
                self.files.entry(key).or_default().push(f.clone());
            }
        }
        log::merge_gold_columns(&mut self.gold_columns, &record.gold_columns);
        self.read_to = self.read_to.max(record.epoch);
        if record.host == HOST {
            self.compactions.push(record);
        }
    }

    /// Whether a committed file is still part of its table (no later record replaced it).
    fn is_visible(&self, path: &str) -> bool {
        partition_of(path)
            .and_then(|key| self.files.get(&key))
            .is_some_and(|files| files.iter().any(|f| f.path == path))
    }
}

/// The table and partition of `<table>/<partition>/<file>` (none for a file outside partitions).
fn partition_of(path: &str) -> Option<(String, String)> {
    let (table, rest) = path.split_once('/')?;
    let (partition, _) = rest.rsplit_once('/')?;
    Some((table.to_string(), partition.to_string()))
}

/// Compacts the lake in `store`: brings `view` up to date, finishes interrupted runs, then merges the small
/// files of every eligible partition.
pub async fn compact(store: &Store, options: &Options, view: &mut LogView) -> Result<Report> {
    view.refresh(store).await?;
    let mut report = Report {
        finished: finish_interrupted(store, view, options.concurrency, ABANDONED_AFTER).await?,
        ..Report::default()
    };
    let now_ms = chrono::Utc::now().timestamp_millis();
    let groups = candidates(view, options, now_ms);
    if groups.is_empty() {
        return Ok(report);
    }
    let run = format!("{now_ms:013}-{:016x}", random());
    let staging = format!("{STAGING}/{run}");
    touch(store, &staging).await;
    let committed =
        stage_and_commit(store, options, view, groups, &run, &staging, &mut report).await;
    match committed {
        Ok(Some(record)) => {
            crash::point("compact.after_record");
            super::publish(store, &record, options.concurrency, &Default::default()).await?;
            report.epoch = Some(record.epoch);
        }
        Ok(None) => {}
        // Nothing was committed: what was staged goes.
        Err(e) => {
            delete_run(store, &staging).await?;
            return Err(e);
        }
    }
    delete_run(store, &staging).await?;
    Ok(report)
}

/// Merges and stages each partition's files, then commits them in one record; `None` when nothing was
/// merged.
async fn stage_and_commit(
    store: &Store,
    options: &Options,
    view: &LogView,
    groups: BTreeMap<(String, String), Vec<FileEntry>>,
    run: &str,
    staging: &str,
    report: &mut Report,
) -> Result<Option<CommitRecord>> {
    let mut tables: BTreeMap<String, Vec<FileEntry>> = BTreeMap::new();
    let mut replaces = Vec::new();
    let mut chain: Vec<String> = Vec::new();
    for ((table, partition), inputs) in groups {
        let dir = format!("{table}/{partition}");
        let staged =
            merge_partition(store, &inputs, options.target_bytes, run, staging, &dir).await;
        let staged = match staged {
            Ok(staged) => staged,
            Err(e) => {
                tracing::warn!(partition = %dir, "left as it is: {e:#}");
                report.skipped.push(format!("{dir}: {e:#}"));
                continue;
            }
        };
        for merged in staged {
            add_new(&mut chain, merged.chain.iter().cloned());
            replaces.extend(merged.inputs.iter().map(|f| f.path.clone()));
            report.merged.push(Merge {
                table: table.clone(),
                path: merged.entry.path.clone(),
                files: merged.inputs.len(),
                rows: merged.entry.rows,
                bytes_before: merged.inputs.iter().map(|f| f.bytes).sum(),
                bytes_after: merged.entry.bytes,
            });
            tables.entry(table.clone()).or_default().push(merged.entry);
        }
    }
    if replaces.is_empty() {
        return Ok(None);
    }
    crash::point("compact.after_files");
    let record = CommitRecord {
        tables,
        chain,
        replaces,
        ..run_record(view, staging)
    };
    match create_record(store, record, view.read_to).await? {
        Created::Now(record) => Ok(Some(record)),
        Created::Before(record) if !gives_up(&record) => Ok(Some(record)),
        Created::Before(given_up) => bail!(
            "a cleaner gave up this compaction's staging ({staging}, epoch {}): it stood still for longer \
             than {} min (a store away, a paused process); run it again",
            given_up.epoch,
            ABANDONED_AFTER.as_secs() / 60
        ),
    }
}

/// The record of the run staging in `staging`, with no files: a cleaner's as it is (the run commits
/// nothing), a run's once its files are added. No sequences, state or counts: a compaction's rows are ones
/// already committed.
fn run_record(view: &LogView, staging: &str) -> CommitRecord {
    CommitRecord {
        format: CommitRecord::FORMAT,
        host: HOST.to_string(),
        committed_at_ms: chrono::Utc::now().timestamp_millis(),
        staging: staging.to_string(),
        // Every record lists the gold columns so far: a restarting pipeline takes them from the log.
        gold_columns: view.gold_columns.clone(),
        ..CommitRecord::default()
    }
}

/// Whether a compaction record is a cleaner's that gave its run up: it replaces nothing, where a run's
/// replaces every file it merged.
fn gives_up(record: &CommitRecord) -> bool {
    record.replaces.is_empty()
}

/// The record of a run's staging in the log.
enum Created {
    /// Just created.
    Now(CommitRecord),
    /// Created before: by the run itself (an attempt whose answer was lost), or by the other side (the run
    /// committed while a cleaner was about to give it up, or a cleaner gave up a run that only stalled).
    Before(CommitRecord),
}

/// Creates the record at the first free epoch after `last`, unless a record of its staging is in the log
/// already, or one created since the files were chosen replaced some of them (another compaction, or a replay
/// in place): then nothing is committed.
async fn create_record(store: &Store, mut record: CommitRecord, mut last: u64) -> Result<Created> {
    loop {
        let newer = retry_log("reading the commit log", || log::records_after(store, last)).await?;
        if let Some(before) = newer.iter().find(|r| r.staging == record.staging) {
            return Ok(Created::Before(before.clone()));
        }
        if let Some(other) = newer
            .iter()
            .find(|r| r.replaces.iter().any(|p| record.replaces.contains(p)))
        {
            bail!(
                "epoch {} ({}) replaced some of the files this compaction merged while it ran: run it again",
                other.epoch,
                other.host
            );
        }
        for r in &newer {
            log::merge_gold_columns(&mut record.gold_columns, &r.gold_columns);
        }
        last = newer.iter().map(|r| r.epoch).max().unwrap_or(last);
        record.epoch = last + 1;
        match retry_log("writing the commit record", || log::create(store, &record)).await? {
            log::CreateOutcome::Created => return Ok(Created::Now(record)),
            log::CreateOutcome::Taken(existing) if *existing == record => {
                return Ok(Created::Now(record));
            }
            // Another writer took the epoch: look at what it did, then take a later one.
            log::CreateOutcome::Taken(_) => {}
        }
    }
}

/// The files to merge, by table and partition: the visible files below half the target size, of partitions
/// whose hour ended `min_age` ago, where there are at least `min_files` of them; in stream order.
fn candidates(
    view: &LogView,
    options: &Options,
    now_ms: i64,
) -> BTreeMap<(String, String), Vec<FileEntry>> {
    let mut groups = BTreeMap::new();
    for ((table, partition), files) in &view.files {
        if !options.tables.is_empty() && !options.tables.contains(table) {
            continue;
        }
        let settled = options.include_current
            || read::partition_start(&format!("{table}/{partition}/")).is_none_or(|start| {
                start
                    .saturating_add(3_600_000)
                    .saturating_add(i64::try_from(options.min_age.as_millis()).unwrap_or(i64::MAX))
                    <= now_ms
            });
        let mut small: Vec<FileEntry> = files
            .iter()
            .filter(|f| f.bytes * 2 < options.target_bytes)
            .cloned()
            .collect();
        if settled && small.len() >= options.min_files.max(2) {
            small.sort_by_key(|f| (f.min_seq, f.max_seq));
            groups.insert((table.clone(), partition.clone()), small);
        }
    }
    groups
}

/// A merged file, staged: its entry (path relative to the lake) and what went into it.
struct Merged {
    entry: FileEntry,
    inputs: Vec<FileEntry>,
    chain: Vec<String>,
}

/// An output file being written.
struct Output {
    writer: ArrowWriter<SpillSink>,
    fields: SchemaRef,
    inputs: Vec<FileEntry>,
    input_bytes: u64,
    /// Lineage of the inputs: the plugin versions and the hosts that wrote them.
    chain: Vec<String>,
    hosts: Vec<String>,
}

/// Merges a partition's files (in `dir`, relative to the lake), in order, into files of about
/// `target_bytes`, each staged as soon as it is closed; a file whose columns differ from the one before it
/// (a gold table that grew a column) starts a new output. Outputs of one input are dropped: that file stays
/// as it is. One input's bytes and one output's open row group are in memory at a time (the output's finished
/// row groups wait on disk, see [`SpillSink`]), and rows pass batch by batch.
async fn merge_partition(
    store: &Store,
    inputs: &[FileEntry],
    target_bytes: u64,
    run: &str,
    staging: &str,
    dir: &str,
) -> Result<Vec<Merged>> {
    let mut staged = Vec::new();
    let mut current: Option<Output> = None;
    for input in inputs {
        let location = store.path(&input.path);
        // A refusal (access denied, an object archived away) does not pass with waiting: the partition is left
        // as it is, rather than the run (and the host's readiness, while it retries) held up for ever.
        let bytes = super::retry_unless(
            &format!("reading {location}"),
            || async {
                match store.store.get(&location).await {
                    Ok(got) => Ok(Some(got.bytes().await?)),
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    Err(e) => Err(e.into()),
                }
            },
            super::is_refusal,
        )
        .await?;
        let Some(bytes) = bytes else {
            bail!(
                "{} is gone: another compaction or a replay in place replaced it since the log was read",
                input.path
            );
        };
        let (input, index, run) = (input.clone(), staged.len(), run.to_string());
        let (output, closed) = tokio::task::spawn_blocking(move || {
            let (output, full) = append(current, input, bytes, target_bytes)?;
            let closed = match full {
                Some(full) => finish(full, &run, index)?,
                None => None,
            };
            anyhow::Ok((output, closed))
        })
        .await??;
        if let Some(closed) = closed {
            staged.push(upload(store, staging, dir, closed).await?);
        }
        current = Some(output);
    }
    if let Some(output) = current {
        let (index, run) = (staged.len(), run.to_string());
        let closed = tokio::task::spawn_blocking(move || finish(output, &run, index)).await??;
        if let Some(closed) = closed {
            staged.push(upload(store, staging, dir, closed).await?);
        }
    }
    Ok(staged)
}

/// Stages a closed output under `<staging>/<dir>/`, and touches the run's marker (it is making progress).
async fn upload(
    store: &Store,
    staging: &str,
    dir: &str,
    (name, data, merged): Closed,
) -> Result<Merged> {
    let path = format!("{dir}/{name}");
    let location = store.path(&format!("{staging}/{path}"));
    retry_upload(&*store.store, &location, &data).await?;
    touch(store, staging).await;
    Ok(Merged {
        entry: FileEntry {
            path,
            ..merged.entry
        },
        ..merged
    })
}

/// Appends the rows of `input` (its file's `bytes`) to `current`, or to a new output when they do not fit
/// (other columns, or past the target size). Returns the output written to, and the one it closed.
fn append(
    current: Option<Output>,
    input: FileEntry,
    bytes: Bytes,
    target_bytes: u64,
) -> Result<(Output, Option<Output>)> {
    let path = input.path.clone();
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .with_context(|| format!("{path} is not a readable Parquet file"))?;
    // The columns alone: the schema's metadata is the file's, which the output writes its own of.
    let fields = Arc::new(Schema::new(builder.schema().fields().clone()));
    let metadata = |key: &str| -> Vec<String> {
        builder
            .metadata()
            .file_metadata()
            .key_value_metadata()
            .into_iter()
            .flatten()
            .filter(|kv| kv.key == key)
            .filter_map(|kv| kv.value.as_deref())
            .flat_map(|v| v.split(',').filter(|s| !s.is_empty()).map(str::to_string))
            .collect()
    };
    let (chain, hosts) = (metadata("weir.chain"), metadata("weir.host"));
    let mut reader = builder
        .with_batch_size(8192)
        .build()?
        .map(|b| b.and_then(|b| RecordBatch::try_new(fields.clone(), b.columns().to_vec())));
    let first = reader
        .next()
        .transpose()
        .with_context(|| format!("reading {path}"))?;
    let fits = current
        .as_ref()
        .is_some_and(|o| o.fields == fields && o.input_bytes + input.bytes <= target_bytes);
    let (mut output, closed) = match current {
        Some(output) if fits => (output, None),
        closed => {
            let empty = RecordBatch::new_empty(fields.clone());
            // Lineage goes in when the file is closed, from all its inputs.
            let properties =
                files::properties(files::ROW_GROUP_ROWS, &[], first.as_ref().unwrap_or(&empty));
            let output = Output {
                writer: files::writer(&fields, properties)?,
                fields: fields.clone(),
                inputs: Vec::new(),
                input_bytes: 0,
                chain: Vec::new(),
                hosts: Vec::new(),
            };
            (output, closed)
        }
    };
    let mut rows = 0;
    for batch in first.into_iter().map(Ok).chain(reader) {
        let batch = batch.with_context(|| format!("reading {path}"))?;
        rows += batch.num_rows() as u64;
        files::write(&mut output.writer, &batch)?;
    }
    if rows != input.rows {
        bail!(
            "{path} holds {rows} rows where its commit says {}: the file is damaged (`weir lake verify --deep`)",
            input.rows
        );
    }
    output.input_bytes += input.bytes;
    output.inputs.push(input);
    add_new(&mut output.chain, chain);
    add_new(&mut output.hosts, hosts);
    Ok((output, closed))
}

/// Adds the labels `into` lacks, keeping their order (lineage lists are short).
fn add_new(into: &mut Vec<String>, labels: impl IntoIterator<Item = String>) {
    for label in labels {
        if !into.contains(&label) {
            into.push(label);
        }
    }
}

/// A closed output: its file name, bytes, and what went into it.
type Closed = (String, FileData, Merged);

/// Closes an output: its file, named like the pipeline's from the sequences it holds, tagged with the run.
fn finish(mut output: Output, run: &str, index: usize) -> Result<Option<Closed>> {
    if output.inputs.len() < 2 {
        return Ok(None);
    }
    for (key, values) in [("weir.chain", &output.chain), ("weir.host", &output.hosts)] {
        output
            .writer
            .append_key_value_metadata(parquet::file::metadata::KeyValue::new(
                key.to_string(),
                values.join(","),
            ));
    }
    let data = output.writer.into_inner()?.finish()?;
    let min_seq = output.inputs.iter().map(|f| f.min_seq).min().unwrap_or(0);
    let max_seq = output.inputs.iter().map(|f| f.max_seq).max().unwrap_or(0);
    let rows = output.inputs.iter().map(|f| f.rows).sum();
    let name = format!("{min_seq:020}-{max_seq:020}-c{run}-{index:03}.parquet");
    let merged = Merged {
        entry: FileEntry {
            path: String::new(),
            rows,
            bytes: data.len(),
            min_seq,
            max_seq,
        },
        inputs: output.inputs,
        chain: output.chain,
    };
    Ok(Some((name, data, merged)))
}

/// Marks a run's staging as in progress, now.
async fn touch(store: &Store, staging: &str) {
    let marker = store.path(&format!("{staging}/{MARKER}"));
    retry("marking the compaction's staging", || async {
        store.store.put(&marker, Bytes::new().into()).await?;
        Ok(())
    })
    .await;
}

/// A random number for run names: hosts in containers share process ids.
fn random() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::UNIX_EPOCH
            .elapsed()
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.finish()
}

/// Finishes the runs that crashed after their record (moves their files in, deletes the ones they replace)
/// and deletes the staging of runs that never made one, once their marker is `abandoned_after` old
/// ([`ABANDONED_AFTER`] but in tests).
async fn finish_interrupted(
    store: &Store,
    view: &mut LogView,
    concurrency: usize,
    abandoned_after: Duration,
) -> Result<usize> {
    let staged: Vec<object_store::ObjectMeta> = store
        .store
        .list(Some(&store.path(STAGING)))
        .try_collect()
        .await
        .context("cannot list the compaction staging")?;
    let run_of = |meta: &object_store::ObjectMeta, name: &str| {
        let relative = store.relative(&meta.location);
        relative
            .strip_suffix(&format!("/{name}"))
            .map(str::to_string)
    };
    let markers: Vec<(String, chrono::DateTime<chrono::Utc>)> = staged
        .iter()
        .filter_map(|m| Some((run_of(m, MARKER)?, m.last_modified)))
        .collect();
    let now = chrono::Utc::now();
    let abandoned_after = chrono::Duration::from_std(abandoned_after).expect("a sane age");
    // Versions before 2026-12-07 claimed a staging with a create-only object before their record (a run) or
    // before deleting it (a cleaner), and know nothing of records that give a run up: a staging such a run
    // claimed is left to it for a day (by default), and the claims they left behind go after that.
    let legacy_claims: Vec<(String, chrono::DateTime<chrono::Utc>)> = staged
        .iter()
        .filter_map(|m| Some((run_of(m, LEGACY_CLAIM)?, m.last_modified)))
        .collect();
    let legacy_claim_expired =
        |made: &chrono::DateTime<chrono::Utc>| now - *made > abandoned_after * 24;
    let mut finished = 0;
    // The records a saved fold stands for, read when a run that stood still has no record in the view.
    let mut folded: Option<Vec<CommitRecord>> = None;
    for (staging, touched) in &markers {
        let claimed = legacy_claims
            .iter()
            .any(|(s, made)| s == staging && !legacy_claim_expired(made));
        let abandoned = now - *touched > abandoned_after && !claimed;
        let mut record = view
            .compactions
            .iter()
            .find(|r| r.staging == *staging)
            .cloned();
        // Read once per pass, and only when a staging is to be given up (a crash before a record, rare).
        // A run's start time, in its name, cannot tell whether its record is in the fold: a record's
        // commit time is set before its create, which a store away may hold up for hours.
        if let Some(through) = view.folded_through
            && record.is_none()
            && abandoned
        {
            if folded.is_none() {
                folded = Some(compactions_through(store, through).await?);
            }
            record = folded
                .iter()
                .flatten()
                .find(|r| r.staging == *staging)
                .cloned();
        }
        match &record {
            Some(record) => {
                tracing::info!(epoch = record.epoch, "finishing an interrupted compaction");
                // Its files that a later record replaced were moved in before (that record's run read
                // them) and are gone for good: not to be moved again.
                let replaced: std::collections::BTreeSet<&str> = record
                    .files()
                    .map(|f| f.path.as_str())
                    .filter(|p| !view.is_visible(p))
                    .collect();
                super::republish(store, record, concurrency, &replaced).await?;
                delete_run(store, staging).await?;
                // A record that gives a run up commits nothing: its staging is still here because its
                // cleaner stopped before deleting it, or the run went on staging after the deletion.
                finished += usize::from(!gives_up(record));
            }
            None if abandoned => give_up(store, view, staging).await?,
            None => {}
        }
    }
    for (staging, made) in &legacy_claims {
        if !markers.iter().any(|(m, _)| m == staging) && legacy_claim_expired(made) {
            let claim = store.path(&format!("{staging}/{LEGACY_CLAIM}"));
            store
                .delete_if_present(&claim)
                .await
                .context("cannot clean the compaction staging")?;
        }
    }
    // Every compaction record read so far is finished now (those without a marker were already).
    view.compactions.clear();
    Ok(finished)
}

/// The compaction records up to epoch `through`, from the whole log, which must list every epoch: a record
/// the listing left out would be taken for none, and its run's staged files deleted.
async fn compactions_through(store: &Store, through: u64) -> Result<Vec<CommitRecord>> {
    let all = retry_log("reading the commit log", || log::all_records(store)).await?;
    let listed = all.iter().filter(|r| r.epoch <= through).count() as u64;
    if listed != through {
        bail!(
            "the commit log lists {listed} records up to epoch {through}, not {through}: not removing the \
             staging of any compaction until it lists them all"
        );
    }
    Ok(all
        .into_iter()
        .filter(|r| r.host == HOST && r.epoch <= through)
        .collect())
}

/// Gives up the run staging in `staging`, which never made a record and has stood still for long: a record
/// that commits nothing goes in the log first, so that the run, if it only stalled, does not commit the
/// files deleted here when it goes on (it finds the record and stands back).
///
/// Only looking past `view.read_to` for the run's own record is enough because every compaction record up to
/// it was looked at: `view` keeps those it read until [`finish_interrupted`] has finished them, and that
/// reads those a saved fold stands for when the view started from one.
async fn give_up(store: &Store, view: &LogView, staging: &str) -> Result<()> {
    match create_record(store, run_record(view, staging), view.read_to).await? {
        Created::Now(record) => {
            tracing::info!(
                %staging,
                epoch = record.epoch,
                "removing the staging of a compaction that never committed"
            );
            delete_run(store, staging).await
        }
        // Another cleaner gave it up first, and may have stopped before deleting it.
        Created::Before(record) if gives_up(&record) => delete_run(store, staging).await,
        // Its run committed meanwhile: it finishes its record, or the next run does.
        Created::Before(record) => {
            tracing::info!(%staging, epoch = record.epoch, "left for its run, which committed it");
            Ok(())
        }
    }
}

/// Deletes a run's staging, the marker last.
async fn delete_run(store: &Store, staging: &str) -> Result<()> {
    let marker = store.path(&format!("{staging}/{MARKER}"));
    let mut leftovers: Vec<object_store::path::Path> = store
        .store
        .list(Some(&store.path(staging)))
        .map_ok(|m| m.location)
        .try_collect()
        .await
        .context("cannot list the compaction staging")?;
    leftovers.retain(|p| *p != marker);
    leftovers.push(marker);
    for location in leftovers {
        store
            .delete_if_present(&location)
            .await
            .context("cannot clean the compaction staging")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lake::testing::{on_memory_store, parquet_bytes};

    fn file(path: &str, bytes: u64, seqs: (u64, u64)) -> FileEntry {
        FileEntry {
            path: path.into(),
            rows: 10,
            bytes,
            min_seq: seqs.0,
            max_seq: seqs.1,
        }
    }

    fn record(epoch: u64, table: &str, files: Vec<FileEntry>, replaces: &[&str]) -> CommitRecord {
        CommitRecord {
            format: CommitRecord::FORMAT,
            epoch,
            host: "h".into(),
            tables: [(table.to_string(), files)].into(),
            replaces: replaces.iter().map(|p| p.to_string()).collect(),
            ..CommitRecord::default()
        }
    }

    /// On an in-memory store: two partitions of three one-row files, each its own commit, where the commit
    /// of one file of the second partition claims two rows. The first partition is merged; the second is left
    /// as it is and reported; nothing is left in staging.
    #[test]
    fn a_damaged_file_leaves_its_partition_as_it_is_and_the_others_are_merged() {
        use arrow_array::{ArrayRef, UInt64Array};
        on_memory_store(|store| async move {
            let files = [(10, 1), (10, 1), (10, 1), (11, 1), (11, 2), (11, 1)];
            for (i, (hour, rows)) in files.into_iter().enumerate() {
                let seq = i as u64 + 1;
                let column: ArrayRef = Arc::new(UInt64Array::from(vec![seq]));
                let bytes = parquet_bytes([("_seq", column)], None);
                let path =
                    format!("silver/dt=2026-11-25/hour={hour}/{seq:020}-{seq:020}-h-000.parquet");
                store
                    .store
                    .put(&store.path(&path), bytes.clone().into())
                    .await
                    .unwrap();
                let entry = FileEntry {
                    path,
                    rows,
                    bytes: bytes.len() as u64,
                    min_seq: seq,
                    max_seq: seq,
                };
                log::create(&store, &record(seq, "silver", vec![entry], &[]))
                    .await
                    .unwrap();
            }
            let options = Options {
                min_age: Duration::ZERO,
                min_files: 2,
                ..Options::default()
            };
            let report = compact(&store, &options, &mut LogView::default())
                .await
                .unwrap();
            assert_eq!(report.epoch, Some(7), "{report:?}");
            assert_eq!(report.merged.len(), 1, "{report:?}");
            assert!(report.merged[0].path.contains("hour=10") && report.merged[0].files == 3);
            assert_eq!(report.merged[0].rows, 3);
            assert_eq!(report.skipped.len(), 1, "{report:?}");
            assert!(report.skipped[0].contains("hour=11") && report.skipped[0].contains("damaged"));

            let records = log::all_records(&store).await.unwrap();
            let replaced = log::replaced_paths(&records);
            let visible: Vec<&FileEntry> = records
                .iter()
                .flat_map(|r| r.files())
                .filter(|f| !replaced.contains(f.path.as_str()))
                .collect();
            assert_eq!(visible.len(), 4, "{visible:?}");
            for f in &visible {
                let found = store.store.get(&store.path(&f.path)).await.unwrap();
                let rows: usize =
                    ParquetRecordBatchReaderBuilder::try_new(found.bytes().await.unwrap())
                        .unwrap()
                        .build()
                        .unwrap()
                        .map(|b| b.unwrap().num_rows())
                        .sum();
                assert_eq!(
                    rows as u64,
                    f.rows.min(if f.path.contains("hour=11") { 1 } else { 3 })
                );
            }
            for path in &replaced {
                assert!(
                    store.store.head(&store.path(path)).await.is_err(),
                    "{path} not deleted"
                );
            }
            let staging: Vec<_> = store
                .store
                .list(Some(&store.path(STAGING)))
                .try_collect()
                .await
                .unwrap();
            assert!(staging.is_empty(), "{staging:?}");
        });
    }

    #[test]
    fn only_small_visible_files_of_settled_partitions_with_enough_company() {
        let old = "silver/dt=2026-11-25/hour=10";
        let recent = "silver/dt=2026-11-25/hour=12";
        // (epoch, table, file, bytes, sequences, replaces)
        let commits = [
            (1, "silver", format!("{old}/a"), 100, (5, 9), None),
            (2, "silver", format!("{old}/b"), 100, (1, 4), None),
            (3, "silver", format!("{old}/big"), 600, (10, 20), None),
            (4, "silver", format!("{old}/gone"), 100, (21, 22), None),
            (
                5,
                "silver",
                format!("{old}/c"),
                100,
                (23, 30),
                Some(format!("{old}/gone")),
            ),
            (6, "silver", format!("{recent}/x"), 100, (31, 31), None),
            (7, "silver", format!("{recent}/y"), 100, (32, 32), None),
            (
                8,
                "bronze",
                "bronze/dt=2026-11-25/hour=10/z".into(),
                1,
                (1, 1),
                None,
            ),
        ];
        let records: Vec<CommitRecord> = commits
            .into_iter()
            .map(|(epoch, table, path, bytes, seqs, replaces)| {
                let replaces: Vec<&str> = replaces.iter().map(String::as_str).collect();
                record(epoch, table, vec![file(&path, bytes, seqs)], &replaces)
            })
            .collect();
        // 13:30 on the 25th: hour 10 ended 2.5 h ago, hour 12 half an hour ago.
        let now = chrono::NaiveDate::from_ymd_opt(2026, 11, 25)
            .and_then(|d| d.and_hms_opt(13, 30, 0))
            .unwrap()
            .and_utc()
            .timestamp_millis();
        let options = Options {
            target_bytes: 1000,
            min_files: 2,
            ..Options::default()
        };
        let mut view = LogView::default();
        for record in records {
            view.absorb(record);
        }
        let candidates = |options: &Options| candidates(&view, options, now);
        let groups = candidates(&options);
        let keys: Vec<_> = groups.keys().cloned().collect();
        assert_eq!(
            keys,
            [("silver".to_string(), "dt=2026-11-25/hour=10".to_string())]
        );
        // In stream order, without the large file and the replaced one.
        let paths: Vec<_> = groups
            .values()
            .flatten()
            .map(|f| f.path.rsplit('/').next().unwrap())
            .collect();
        assert_eq!(paths, ["b", "a", "c"]);

        let settled = Options {
            min_age: Duration::ZERO,
            ..options.clone()
        };
        assert_eq!(candidates(&settled).len(), 2);
        let picky = Options {
            min_files: 4,
            ..options
        };
        assert!(candidates(&picky).is_empty());
    }

    /// A run that stood still before its record (crashed, or only stalled) is given up through the log: the
    /// cleaner's record of its staging commits nothing, the staging goes, and the run, if it goes on, finds
    /// that record and commits nothing. A run whose record came first is left to finish.
    #[test]
    fn a_run_that_stood_still_is_given_up_through_the_log() {
        on_memory_store(|store| async move {
            let put = |path: String, body: &'static str| {
                let store = store.clone();
                async move {
                    let location = store.path(&path);
                    store
                        .store
                        .put(&location, Bytes::from(body).into())
                        .await
                        .unwrap();
                }
            };
            let staged = |run: &str| {
                let store = store.clone();
                let prefix = store.path(&format!("{STAGING}/{run}"));
                async move {
                    let found: Vec<object_store::ObjectMeta> =
                        store.store.list(Some(&prefix)).try_collect().await.unwrap();
                    found.len()
                }
            };
            // `stalled` staged a file and stood still; `claimed` died between its claim (as earlier versions
            // made one) and its record; only a claim is left of `given-up-before`, which an earlier
            // version gave up; `committed` made its record after the cleaner last read the log. (Legacy
            // claims count after a day, by default: here, at once.)
            for run in ["stalled", "claimed", "committed"] {
                touch(&store, &format!("{STAGING}/{run}")).await;
                put(format!("{STAGING}/{run}/silver/a.parquet"), "rows").await;
            }
            put(format!("{STAGING}/claimed/{LEGACY_CLAIM}"), "commit").await;
            put(
                format!("{STAGING}/given-up-before/{LEGACY_CLAIM}"),
                "abandon",
            )
            .await;
            let mut view = LogView::default();
            view.refresh(&store).await.unwrap();
            let merged = |run: &str| CommitRecord {
                replaces: vec!["silver/dt=2026-11-25/hour=10/a.parquet".into()],
                ..run_record(&LogView::default(), &format!("{STAGING}/{run}"))
            };
            let Created::Now(committed) =
                create_record(&store, merged("committed"), 0).await.unwrap()
            else {
                panic!("the log is empty")
            };
            assert_eq!(committed.epoch, 1);

            let finished = finish_interrupted(&store, &mut view, 1, Duration::ZERO)
                .await
                .unwrap();
            assert_eq!(finished, 0);
            for run in ["stalled", "claimed", "given-up-before"] {
                assert_eq!(staged(run).await, 0, "{run} is still staged");
            }
            assert_eq!(
                staged("committed").await,
                2,
                "the committed run's staging was not left alone"
            );
            let records = log::all_records(&store).await.unwrap();
            let given_up: Vec<String> = records
                .iter()
                .filter(|r| r.host == HOST && r.tables.is_empty() && r.replaces.is_empty())
                .map(|r| r.staging.replace(&format!("{STAGING}/"), ""))
                .collect();
            assert_eq!(given_up, ["claimed", "stalled"], "{records:?}");

            // The stalled run goes on to commit: the log says it was given up.
            let outcome = create_record(&store, merged("stalled"), 0).await.unwrap();
            assert!(matches!(outcome, Created::Before(r) if r.replaces.is_empty()));
            // An attempt of the committed run whose answer was lost finds its own record.
            let outcome = create_record(&store, merged("committed"), 0).await.unwrap();
            assert!(matches!(outcome, Created::Before(r) if r.epoch == 1));
        });
    }

    /// A view that starts from a saved fold of the log has not read the compaction records the fold stands
    /// for: a run that died after such a record is still finished (its files moved into place) once its
    /// staging has stood still for long, not given up.
    #[test]
    fn a_view_from_a_saved_fold_finishes_a_run_the_fold_stands_for() {
        on_memory_store(|store| async move {
            let staging = format!("{STAGING}/early");
            let merged = "silver/dt=2026-11-25/hour=10/merged.parquet";
            touch(&store, &staging).await;
            let staged = store.path(&format!("{staging}/{merged}"));
            store
                .store
                .put(&staged, Bytes::from_static(b"rows").into())
                .await
                .unwrap();
            // Epoch 1: the run's record; then enough commits for a reader to fold the log and save it.
            let run = CommitRecord {
                epoch: 1,
                tables: [("silver".to_string(), vec![file(merged, 4, (1, 2))])].into(),
                replaces: vec!["silver/dt=2026-11-25/hour=10/small.parquet".into()],
                ..run_record(&LogView::default(), &staging)
            };
            log::create(&store, &run).await.unwrap();
            let last = 2 * log::CachedLog::KEEP as u64 + 10;
            for epoch in 2..=last {
                let path = format!("silver/dt=2026-11-25/hour=11/{epoch}.parquet");
                let commit = record(epoch, "silver", vec![file(&path, 1, (epoch, epoch))], &[]);
                log::create(&store, &commit).await.unwrap();
            }
            log::CachedLog::default().records(&store).await.unwrap();
            let through = tokio::time::timeout(Duration::from_secs(10), async {
                loop {
                    if let Some(folded) = log::saved_fold(&store).await {
                        break folded.epoch;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
            .await
            .expect("the fold is saved");

            let mut view = LogView::default();
            view.refresh(&store).await.unwrap();
            assert_eq!(view.folded_through, Some(through));
            assert_eq!(view.read_to, last);
            assert!(view.compactions.is_empty());
            assert!(view.is_visible(merged));

            // While its staging is young, the run is left alone (it may be under way, for all the view
            // knows); once old, it is finished, by the same view.
            let hour = Duration::from_secs(3600);
            assert_eq!(
                finish_interrupted(&store, &mut view, 1, hour)
                    .await
                    .unwrap(),
                0
            );
            store.store.head(&staged).await.unwrap();
            let finished = finish_interrupted(&store, &mut view, 1, Duration::ZERO)
                .await
                .unwrap();
            assert_eq!(finished, 1);
            store.store.head(&store.path(merged)).await.unwrap();
            assert!(store.store.head(&staged).await.is_err());
            let records = log::all_records(&store).await.unwrap();
            assert_eq!(
                records.len() as u64,
                last,
                "a record was added: {:?}",
                records.last()
            );
        });
    }
}
