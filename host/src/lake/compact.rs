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
//! did not, once it is old enough not to belong to a run still going.

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

use super::log::{self, CommitRecord, FileEntry, Ranges};
use super::store::Store;
use super::{crash, files, read, retry};

/// Where runs stage their files: `<STAGING>/<run>/`.
const STAGING: &str = "_weir/staging/compact";
/// The object that marks a run's staging as not finished yet (deleted last).
const MARKER: &str = "_unfinished";
/// The `host` of compaction records.
pub const HOST: &str = "compact";
/// Staging of a run with no commit record is deleted once it is this old (a younger one may be running).
const ABANDONED_AFTER: Duration = Duration::from_secs(3600);

/// What to compact.
#[derive(Clone, Debug)]
pub struct Options {
    /// Only partitions whose hour ended at least this long ago: late events still land in recent ones.
    pub min_age: Duration,
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
}

/// What compaction knows of the commit log: the visible files by table and partition, and the records that
/// replaced files (compactions and replays in place: a few), which finishing an interrupted run needs. A
/// lake commits every few seconds, so a long-running pipeline keeps one and reads only the records created
/// since it last looked, instead of the whole log at every run.
#[derive(Debug, Default)]
pub struct LogView {
    read_to: u64,
    files: BTreeMap<(String, String), Vec<FileEntry>>,
    replacing: Vec<CommitRecord>,
}

impl LogView {
    /// Reads the records created since the last look (the whole log the first time).
    pub async fn refresh(&mut self, store: &Store) -> Result<()> {
        let records = if self.read_to == 0 {
            read::records(store).await?
        } else {
            log::records_after(store, self.read_to).await?
        };
        for record in records {
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
        self.read_to = self.read_to.max(record.epoch);
        if !record.replaces.is_empty() {
            self.replacing.push(record);
        }
    }

    fn replaced(&self) -> std::collections::BTreeSet<&str> {
        self.replacing
            .iter()
            .flat_map(|r| r.replaces.iter().map(String::as_str))
            .collect()
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
        finished: finish_interrupted(store, view, options.concurrency).await?,
        ..Report::default()
    };
    let now_ms = chrono::Utc::now().timestamp_millis();
    let groups = candidates(view, options, now_ms);
    if groups.is_empty() {
        return Ok(report);
    }
    let run = format!("{now_ms:013}-{}", std::process::id());
    let staging = format!("{STAGING}/{run}");
    let marker = store.path(&format!("{staging}/{MARKER}"));
    retry("marking the compaction's staging", || async {
        store.store.put(&marker, Bytes::new().into()).await?;
        Ok(())
    })
    .await;

    let mut tables: BTreeMap<String, Vec<FileEntry>> = BTreeMap::new();
    let mut replaces = Vec::new();
    let mut chain: Vec<String> = Vec::new();
    for ((table, partition), inputs) in groups {
        for merged in merge_partition(store, &inputs, options.target_bytes, &run).await? {
            let path = format!("{table}/{partition}/{}", merged.name);
            let location = store.path(&format!("{staging}/{path}"));
            let bytes = merged.bytes.clone();
            retry(&format!("uploading {location}"), || async {
                store.store.put(&location, bytes.clone().into()).await?;
                Ok(())
            })
            .await;
            for label in &merged.chain {
                if !chain.contains(label) {
                    chain.push(label.clone());
                }
            }
            replaces.extend(merged.inputs.iter().map(|f| f.path.clone()));
            report.merged.push(Merge {
                table: table.clone(),
                path: path.clone(),
                files: merged.inputs.len(),
                rows: merged.entry.rows,
                bytes_before: merged.inputs.iter().map(|f| f.bytes).sum(),
                bytes_after: merged.bytes.len() as u64,
            });
            tables.entry(table.clone()).or_default().push(FileEntry {
                path,
                ..merged.entry
            });
        }
    }
    if replaces.is_empty() {
        delete_run(store, &staging).await?;
        return Ok(report);
    }
    crash::point("compact.after_files");

    let record = CommitRecord {
        format: CommitRecord::FORMAT,
        epoch: 0,
        host: HOST.to_string(),
        committed_at_ms: chrono::Utc::now().timestamp_millis(),
        sequences: Ranges::default(),
        tables,
        staging: staging.clone(),
        state: None,
        state_full: false,
        chain,
        dropped: BTreeMap::new(),
        quarantined: BTreeMap::new(),
        replaces,
        replay: None,
        replaced_dropped: BTreeMap::new(),
        replaced_quarantined: BTreeMap::new(),
        gold_columns: BTreeMap::new(),
    };
    let record = create_record(store, record, view.read_to).await?;
    report.epoch = Some(record.epoch);
    crash::point("compact.after_record");

    super::publish(store, &record, options.concurrency, &Default::default()).await?;
    delete_run(store, &staging).await?;
    Ok(report)
}

/// Creates the record at the first free epoch after `last`, unless a record created since the files were
/// chosen replaced some of them (another compaction, or a replay in place): then nothing is committed.
async fn create_record(
    store: &Store,
    mut record: CommitRecord,
    mut last: u64,
) -> Result<CommitRecord> {
    loop {
        let newer = retry("reading the commit log", || log::records_after(store, last)).await;
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
        // The newest gold column types: a restarting pipeline takes them from the log.
        if let Some(newest) = newer.iter().rev().find(|r| !r.gold_columns.is_empty()) {
            record.gold_columns = newest.gold_columns.clone();
        }
        last = newer.iter().map(|r| r.epoch).max().unwrap_or(last);
        record.epoch = last + 1;
        match retry("writing the commit record", || log::create(store, &record)).await {
            log::CreateOutcome::Created => return Ok(record),
            log::CreateOutcome::Taken(existing) if *existing == record => return Ok(record),
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
        let settled = read::partition_start(&format!("{table}/{partition}/"))
            .is_none_or(|start| start + 3_600_000 + options.min_age.as_millis() as i64 <= now_ms);
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

/// A merged file, before it is staged.
struct Merged {
    name: String,
    bytes: Bytes,
    entry: FileEntry,
    inputs: Vec<FileEntry>,
    chain: Vec<String>,
}

/// An output file being written.
struct Output {
    writer: ArrowWriter<Vec<u8>>,
    fields: SchemaRef,
    inputs: Vec<FileEntry>,
    input_bytes: u64,
    chain: Vec<String>,
}

/// Merges a partition's files, in order, into files of about `target_bytes`; a file whose columns differ
/// from the one before it (a gold table that grew a column) starts a new output. Outputs of one input are
/// dropped: that file stays as it is. One input's bytes and one output are in memory at a time, and the
/// rows pass through batch by batch.
async fn merge_partition(
    store: &Store,
    inputs: &[FileEntry],
    target_bytes: u64,
    run: &str,
) -> Result<Vec<Merged>> {
    let mut done = Vec::new();
    let mut current: Option<Output> = None;
    for input in inputs {
        let location = store.path(&input.path);
        let bytes = retry(&format!("reading {location}"), || async {
            Ok(store.store.get(&location).await?.bytes().await?)
        })
        .await;
        let (input, index, run) = (input.clone(), done.len(), run.to_string());
        let (output, finished) = tokio::task::spawn_blocking(move || {
            let (output, full) = append(current, input, bytes, target_bytes)?;
            let finished = match full {
                Some(full) => finish(full, &run, index)?,
                None => None,
            };
            anyhow::Ok((output, finished))
        })
        .await??;
        done.extend(finished);
        current = Some(output);
    }
    if let Some(output) = current {
        let (index, run) = (done.len(), run.to_string());
        done.extend(tokio::task::spawn_blocking(move || finish(output, &run, index)).await??);
    }
    Ok(done)
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
    let chain: Vec<String> = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .into_iter()
        .flatten()
        .filter(|kv| kv.key == "weir.chain")
        .filter_map(|kv| kv.value.as_deref())
        .flat_map(|v| v.split(',').filter(|s| !s.is_empty()).map(str::to_string))
        .collect();
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
            let host = [("weir.host".to_string(), HOST.to_string())];
            let properties = files::properties(
                files::ROW_GROUP_ROWS,
                &host,
                first.as_ref().unwrap_or(&empty),
            );
            let output = Output {
                writer: ArrowWriter::try_new(Vec::new(), fields.clone(), Some(properties))?,
                fields: fields.clone(),
                inputs: Vec::new(),
                input_bytes: 0,
                chain: Vec::new(),
            };
            (output, closed)
        }
    };
    let mut rows = 0;
    for batch in first.into_iter().map(Ok).chain(reader) {
        let batch = batch.with_context(|| format!("reading {path}"))?;
        rows += batch.num_rows() as u64;
        output.writer.write(&batch)?;
    }
    if rows != input.rows {
        bail!(
            "{path} holds {rows} rows where its commit says {}: the file is damaged (`weir lake verify --deep`); \
             nothing was compacted",
            input.rows
        );
    }
    output.input_bytes += input.bytes;
    output.inputs.push(input);
    for label in chain {
        if !output.chain.contains(&label) {
            output.chain.push(label);
        }
    }
    Ok((output, closed))
}

/// Closes an output: its file, named like the pipeline's from the sequences it holds, tagged with the run.
fn finish(mut output: Output, run: &str, index: usize) -> Result<Option<Merged>> {
    if output.inputs.len() < 2 {
        return Ok(None);
    }
    let chain = output.chain.join(",");
    output
        .writer
        .append_key_value_metadata(parquet::file::metadata::KeyValue::new(
            "weir.chain".to_string(),
            chain,
        ));
    let bytes = output.writer.into_inner()?;
    let min_seq = output.inputs.iter().map(|f| f.min_seq).min().unwrap_or(0);
    let max_seq = output.inputs.iter().map(|f| f.max_seq).max().unwrap_or(0);
    let rows = output.inputs.iter().map(|f| f.rows).sum();
    let name = format!("{min_seq:020}-{max_seq:020}-c{run}-{index:03}.parquet");
    Ok(Some(Merged {
        entry: FileEntry {
            path: String::new(),
            rows,
            bytes: bytes.len() as u64,
            min_seq,
            max_seq,
        },
        name,
        bytes: Bytes::from(bytes),
        inputs: output.inputs,
        chain: output.chain,
    }))
}

/// Finishes the runs that crashed after their record (moves their files in, deletes the ones they replace)
/// and deletes the staging of runs that never made one, once it is [`ABANDONED_AFTER`] old.
async fn finish_interrupted(store: &Store, view: &LogView, concurrency: usize) -> Result<usize> {
    let markers: Vec<object_store::ObjectMeta> = store
        .store
        .list(Some(&store.path(STAGING)))
        .try_filter(|m| futures::future::ready(m.location.filename() == Some(MARKER)))
        .try_collect()
        .await
        .context("cannot list the compaction staging")?;
    let replaced = view.replaced();
    let mut finished = 0;
    for marker in markers {
        let relative = store.relative(&marker.location);
        let Some(staging) = relative.strip_suffix(&format!("/{MARKER}")) else {
            continue;
        };
        match view.replacing.iter().find(|r| r.staging == staging) {
            Some(record) => {
                tracing::info!(epoch = record.epoch, "finishing an interrupted compaction");
                super::publish(store, record, concurrency, &replaced).await?;
                delete_run(store, staging).await?;
                finished += 1;
            }
            None if chrono::Utc::now() - marker.last_modified
                > chrono::Duration::from_std(ABANDONED_AFTER).expect("an hour") =>
            {
                tracing::info!(%staging, "removing the staging of a compaction that never committed");
                delete_run(store, staging).await?;
            }
            None => {}
        }
    }
    Ok(finished)
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
        match store.store.delete(&location).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e).context("cannot clean the compaction staging"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
            committed_at_ms: 0,
            sequences: Ranges::default(),
            tables: [(table.to_string(), files)].into(),
            staging: String::new(),
            state: None,
            state_full: false,
            chain: Vec::new(),
            dropped: BTreeMap::new(),
            quarantined: BTreeMap::new(),
            replaces: replaces.iter().map(|p| p.to_string()).collect(),
            replay: None,
            replaced_dropped: BTreeMap::new(),
            replaced_quarantined: BTreeMap::new(),
            gold_columns: BTreeMap::new(),
        }
    }

    #[test]
    fn only_small_visible_files_of_settled_partitions_with_enough_company() {
        let old = "silver/dt=2026-11-25/hour=10";
        let recent = "silver/dt=2026-11-25/hour=12";
        let records = vec![
            record(
                1,
                "silver",
                vec![file(&format!("{old}/a"), 100, (5, 9))],
                &[],
            ),
            record(
                2,
                "silver",
                vec![file(&format!("{old}/b"), 100, (1, 4))],
                &[],
            ),
            record(
                3,
                "silver",
                vec![file(&format!("{old}/big"), 600, (10, 20))],
                &[],
            ),
            record(
                4,
                "silver",
                vec![file(&format!("{old}/gone"), 100, (21, 22))],
                &[],
            ),
            record(
                5,
                "silver",
                vec![file(&format!("{old}/c"), 100, (23, 30))],
                &[&format!("{old}/gone")],
            ),
            record(
                6,
                "silver",
                vec![file(&format!("{recent}/x"), 100, (31, 31))],
                &[],
            ),
            record(
                7,
                "silver",
                vec![file(&format!("{recent}/y"), 100, (32, 32))],
                &[],
            ),
            record(
                8,
                "bronze",
                vec![file("bronze/dt=2026-11-25/hour=10/z", 1, (1, 1))],
                &[],
            ),
        ];
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
}
