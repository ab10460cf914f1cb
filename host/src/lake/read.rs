//! Reading a lake back: what it holds (`weir lake ls`), whether its files and its commit log agree
//! (`weir lake verify`), and the rows of a table in a time range (`weir lake query`).

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use arrow_array::{Array, RecordBatch, TimestampMicrosecondArray};
use std::ops::Range;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
use parquet::arrow::async_reader::AsyncFileReader;
use parquet::arrow::{ParquetRecordBatchStreamBuilder, ProjectionMask};
use parquet::errors::ParquetError;
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader, RowGroupMetaData};
use parquet::file::statistics::Statistics;

use super::log::{self, CommitRecord, FileEntry};
use super::store::Store;

/// Per-table totals.
#[derive(Debug, Default, PartialEq, serde::Serialize)]
pub struct TableSummary {
    pub files: u64,
    pub rows: u64,
    pub bytes: u64,
}

/// What `weir lake ls` tells.
#[derive(Debug, Default, PartialEq, serde::Serialize)]
pub struct Summary {
    pub commits: u64,
    pub events: u64,
    pub last_commit_ms: Option<i64>,
    pub tables: BTreeMap<String, TableSummary>,
    pub dropped: BTreeMap<String, u64>,
    pub quarantined: BTreeMap<String, u64>,
}

/// What the lake holds, from its commit log (all of it, or a fold and the records after it: see
/// `log::CachedLog`).
pub fn summarize(records: &[CommitRecord]) -> Summary {
    let mut s = Summary::default();
    let replaced = super::log::replaced_paths(records);
    for r in records {
        s.commits += r.commits();
        s.events += r.events();
        s.last_commit_ms = Some(r.committed_at_ms);
        for (table, files) in &r.tables {
            let t = s.tables.entry(table.clone()).or_default();
            for f in files.iter().filter(|f| !replaced.contains(f.path.as_str())) {
                t.files += 1;
                t.rows += f.rows;
                t.bytes += f.bytes;
            }
        }
        super::log::add_counts(r, &mut s.dropped, &mut s.quarantined);
    }
    s
}

/// Stream sequences `from..=to` claimed by the commits of two epochs.
#[derive(Debug, PartialEq, Eq, serde::Serialize)]
pub struct DuplicateClaim {
    pub from: u64,
    pub to: u64,
    pub epochs: [u64; 2],
}

/// Every overlap between the claims `(from, to, epoch)`, each against the claim that reaches furthest among
/// those before it (an overlap with a claim that is not the previous one is found too).
fn overlaps(mut claims: Vec<(u64, u64, u64)>) -> Vec<DuplicateClaim> {
    claims.sort();
    let mut found = Vec::new();
    // The claim seen so far that ends last: (to, epoch).
    let mut furthest: Option<(u64, u64)> = None;
    for (from, to, epoch) in claims {
        if let Some((end, earlier)) = furthest
            && from <= end
        {
            found.push(DuplicateClaim {
                from,
                to: to.min(end),
                epochs: [earlier, epoch],
            });
        }
        if furthest.is_none_or(|(end, _)| to > end) {
            furthest = Some((to, epoch));
        }
    }
    found
}

/// What `verify` found wrong.
#[derive(Debug, Default, serde::Serialize)]
pub struct Problems {
    /// Files a commit lists that are not in the store.
    pub missing: Vec<String>,
    /// Files a commit lists that the store finds by name but leaves out of its listings: engines that read
    /// the directories (DuckDB, pyarrow, Spark) do not see their rows.
    pub unlisted: Vec<String>,
    /// Parquet files in the tables that no commit lists (invisible to a correct reader, but not to a glob).
    pub orphaned: Vec<String>,
    /// Stream sequences two commits both claim.
    pub duplicate_sequences: Vec<DuplicateClaim>,
    /// Files whose row count differs from their commit's (`--deep`).
    pub wrong_rows: Vec<String>,
    /// Files whose size differs from their commit's: rewritten or cut short since.
    pub wrong_size: Vec<String>,
    /// Files whose footer cannot be read as Parquet (`--deep`), with why.
    pub unreadable: Vec<String>,
    /// Staged files left behind.
    pub staging_leftovers: u64,
    /// Files a compaction or a replay in place replaced that are still there: a reader that globs the
    /// directories (DuckDB, pyarrow) counts their rows twice until the next `weir run` or `weir lake
    /// compact` deletes them.
    pub replaced_present: Vec<String>,
}

impl Problems {
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty()
            && self.unlisted.is_empty()
            && self.orphaned.is_empty()
            && self.duplicate_sequences.is_empty()
            && self.wrong_rows.is_empty()
            && self.wrong_size.is_empty()
            && self.unreadable.is_empty()
            && self.replaced_present.is_empty()
    }
}

/// Footers `weir lake verify --deep` reads at a time.
const DEEP_CONCURRENCY: usize = 16;

/// Checks the commit log against the store. `deep` also reads every file's footer to compare its row count.
///
/// A live lake is checked as it is: the files are listed before the log is read (a file is moved into place
/// only after its commit record exists, so none listed lacks its record), and what looks missing or left
/// over is looked at again at the end, since commits and compactions go on meanwhile.
pub async fn verify(store: &Store, deep: bool) -> Result<Problems> {
    let all: Vec<object_store::ObjectMeta> = store
        .store
        .list(Some(&store.prefix))
        .try_collect()
        .await
        .context("cannot list the lake")?;
    let records = log::all_records(store).await?;
    let mut problems = Problems::default();
    let replaced = super::log::replaced_paths(&records);
    let mut listed: BTreeMap<&str, &FileEntry> = BTreeMap::new();
    for r in &records {
        for f in r.files() {
            listed.insert(&f.path, f);
        }
    }
    // Sequences claimed twice.
    problems.duplicate_sequences = overlaps(
        records
            .iter()
            .flat_map(|r| r.sequences.0.iter().map(move |&(a, b)| (a, b, r.epoch)))
            .collect(),
    );
    // Every Parquet file of the tables, with its size.
    let mut present = BTreeMap::new();
    for meta in &all {
        let relative = store.relative(&meta.location);
        if relative.starts_with("_versions/") {
            // Replays' table versions: lakes of their own, each with its own log.
            continue;
        }
        if relative.starts_with("_weir/staging/") {
            problems.staging_leftovers += 1;
        } else if relative.ends_with(".parquet") {
            if replaced.contains(relative.as_str()) {
                problems.replaced_present.push(relative.clone());
            } else if !listed.contains_key(relative.as_str()) {
                problems.orphaned.push(relative.clone());
            }
            present.insert(relative, meta.size);
        }
    }
    let mut footers = Vec::new();
    for (&path, file) in &listed {
        if replaced.contains(path) {
            continue;
        }
        let Some(&size) = present.get(path) else {
            problems.missing.push(path.to_string());
            continue;
        };
        // Records from before sizes were kept say 0.
        if file.bytes > 0 && size != file.bytes {
            problems.wrong_size.push(format!(
                "{path}: {size} bytes, the commit says {}",
                file.bytes
            ));
        } else if deep {
            footers.push(*file);
        }
    }
    // Deep: each file's row count from its footer alone, several requests at a time.
    let mut counted = futures::stream::iter(footers)
        // Where the log says they are: a file still staged is missing from the table's directory.
        .map(|file| async move { (file, file_metadata(store, Committed::in_place(file)).await) })
        .buffer_unordered(DEEP_CONCURRENCY);
    while let Some((file, metadata)) = counted.next().await {
        let metadata = match metadata {
            Ok(metadata) => metadata,
            // Gone since the listing: looked at again below, with the missing.
            Err(e) if is_not_found(&e) => {
                problems.missing.push(file.path.clone());
                continue;
            }
            Err(e) => {
                problems.unreadable.push(format!("{}: {e:#}", file.path));
                continue;
            }
        };
        let actual = metadata.file_metadata().num_rows() as u64;
        if actual != file.rows {
            problems.wrong_rows.push(format!(
                "{}: {actual} rows, the commit says {}",
                file.path, file.rows
            ));
        }
    }
    problems.wrong_rows.sort();
    problems.unreadable.sort();
    // Looked at again: a commit may have moved a file into place since the listing, a compaction may have
    // deleted what it replaced.
    let exists = |path: &String| {
        let location = store.path(path);
        async move { store.store.head(&location).await.is_ok() }
    };
    let mut missing = Vec::new();
    for path in std::mem::take(&mut problems.missing) {
        if !exists(&path).await {
            missing.push(path);
        } else if !in_listing(store, &path).await? {
            problems.unlisted.push(path);
        }
    }
    // A compaction that committed after the log was read deletes what it replaced: not missing either.
    if !missing.is_empty() {
        let records = log::all_records(store).await?;
        let replaced = log::replaced_paths(&records);
        missing.retain(|path| !replaced.contains(path.as_str()));
    }
    missing.sort();
    problems.missing = missing;
    let mut still = Vec::new();
    for path in std::mem::take(&mut problems.replaced_present) {
        if exists(&path).await {
            still.push(path);
        }
    }
    problems.replaced_present = still;
    Ok(problems)
}

/// Whether a listing of its directory shows `path` (a file found by name, which the lake's first listing
/// did not show: moved into place since, or left out by the store).
async fn in_listing(store: &Store, path: &str) -> Result<bool> {
    let location = store.path(path);
    let dir = object_store::path::Path::from(
        location
            .as_ref()
            .rsplit_once('/')
            .map_or("", |(dir, _)| dir),
    );
    let found: Vec<object_store::ObjectMeta> = store
        .store
        .list(Some(&dir))
        .try_filter(|m| futures::future::ready(m.location == location))
        .try_collect()
        .await
        .with_context(|| format!("cannot list {dir}"))?;
    Ok(!found.is_empty())
}

/// The column a table's rows are timed by (the one it is partitioned by).
pub fn time_column(table: &str) -> &'static str {
    match table {
        "bronze" => "ingest_time",
        "silver" => "_event_time",
        "drops" | "quarantine_bronze" | "quarantine_silver" | "quarantine_gold" => "event_time",
        _ => "window_start",
    }
}

/// The column that times a row whose [`time_column`] is null: a quarantined event whose time could not be
/// read is partitioned by when it was quarantined.
fn fallback_time_column(table: &str) -> Option<&'static str> {
    table.starts_with("quarantine").then_some("quarantined_at")
}

/// The committed files of `table` whose partition (hour) overlaps `[from_ms, to_ms)`, oldest first.
pub fn files_in_range<'a>(
    records: &'a [CommitRecord],
    table: &str,
    from_ms: i64,
    to_ms: i64,
) -> Vec<Committed<'a>> {
    let replaced = super::log::replaced_paths(records);
    let mut files: Vec<Committed> = records
        .iter()
        .flat_map(|r| {
            r.tables
                .get(table)
                .into_iter()
                .flatten()
                .map(|file| Committed {
                    file,
                    record: Some(r),
                })
        })
        .filter(|f| !replaced.contains(f.path.as_str()))
        .filter(|f| {
            partition_start(&f.path)
                .is_none_or(|start| start < to_ms && start + 3_600_000 > from_ms)
        })
        .collect();
    files.sort_by(|a, b| a.path.cmp(&b.path));
    files
}

/// A file the commit log lists, with the record that committed it: a record's files are in place moments
/// after it, unless its host stopped in between, and then stay in its staging until that host starts again
/// or another host moves them (a minute later, at its next checkpoint). Reads take them from there meanwhile.
#[derive(Clone, Copy, Debug)]
pub struct Committed<'a> {
    pub file: &'a FileEntry,
    /// `None` for a file read only where the log says it is. A folded record (see `log::fold`), whose files
    /// are in place long since, names no staging.
    record: Option<&'a CommitRecord>,
}

impl<'a> Committed<'a> {
    /// A file read only at its path.
    pub fn in_place(file: &'a FileEntry) -> Self {
        Committed { file, record: None }
    }

    /// Where its commit staged it, when known.
    fn staged(&self) -> Option<String> {
        self.record
            .filter(|r| !r.staging.is_empty())
            .map(|r| r.staged(&self.file.path))
    }
}

impl std::ops::Deref for Committed<'_> {
    type Target = FileEntry;

    fn deref(&self) -> &FileEntry {
        self.file
    }
}

/// The start of the hour a path's `dt=.../hour=...` names.
pub fn partition_start(path: &str) -> Option<i64> {
    let dt = path.split('/').find_map(|p| p.strip_prefix("dt="))?;
    let hour: u32 = path
        .split('/')
        .find_map(|p| p.strip_prefix("hour="))?
        .parse()
        .ok()?;
    let date = chrono::NaiveDate::parse_from_str(dt, "%Y-%m-%d").ok()?;
    Some(date.and_hms_opt(hour, 0, 0)?.and_utc().timestamp_millis())
}

/// Whether reading failed because the file is gone (a compaction or a replay in place replaced it after the
/// log was read: read the log again).
pub fn is_not_found(error: &anyhow::Error) -> bool {
    error.chain().any(|e| {
        matches!(
            e.downcast_ref::<object_store::Error>(),
            Some(object_store::Error::NotFound { .. })
        )
    })
}

/// A committed file read in pieces through ranged GETs: its footer first, then only the row groups and
/// columns a read asks for. A query of an hour, a deep verify or a replay fetches what it uses, not every
/// byte of every file it touches (on S3, GCS and Azure each whole-file download costs time and money).
/// A read that wants most of the file takes it whole, in one GET instead of one per row group.
pub struct StoreFile {
    store: std::sync::Arc<dyn object_store::ObjectStore>,
    path: object_store::path::Path,
    /// Where the file's commit staged it: read from there while it is not in place. The two are the same
    /// bytes (one is moved to the other), so a read may switch between them at any request.
    staged: Option<object_store::path::Path>,
    /// Whether the last read found it staged (and so looks there first).
    from_staging: bool,
    size: u64,
    /// The whole file, once a read decided to take it so.
    whole: Option<Bytes>,
}

impl StoreFile {
    async fn take_whole(&mut self) -> Result<()> {
        let bytes = self
            .either(|store, path| async move { store.get(&path).await?.bytes().await })
            .await?;
        self.whole = Some(bytes);
        Ok(())
    }

    /// `read` of the file where it is: at its path or at its staged copy, where the last read found it
    /// first. Not found at either: the error of its path, which callers take as a sign to read the log again
    /// (a compaction replaced the file); so is any error of the staged copy (a reader not allowed there).
    async fn either<T, F>(
        &mut self,
        read: impl Fn(std::sync::Arc<dyn object_store::ObjectStore>, object_store::path::Path) -> F,
    ) -> object_store::Result<T>
    where
        F: std::future::Future<Output = object_store::Result<T>>,
    {
        let Some(staged) = self.staged.clone() else {
            return read(self.store.clone(), self.path.clone()).await;
        };
        // A move copies the file into place before it deletes the staged copy: looked for a third time where
        // it was looked for first, a file moved between the first two looks is found.
        let looks = if self.from_staging {
            [true, false, true]
        } else {
            [false, true, false]
        };
        let mut not_found = None;
        for at_staging in looks {
            let location = if at_staging { &staged } else { &self.path };
            match read(self.store.clone(), location.clone()).await {
                Ok(found) => {
                    self.from_staging = at_staging;
                    return Ok(found);
                }
                Err(e @ object_store::Error::NotFound { .. }) if !at_staging => not_found = Some(e),
                Err(e) if !at_staging => return Err(e),
                Err(_) => {}
            }
        }
        Err(not_found.expect("its path is looked at"))
    }

    fn cut(whole: &Bytes, range: Range<u64>) -> parquet::errors::Result<Bytes> {
        let (start, end) = (range.start as usize, range.end as usize);
        if end > whole.len() {
            return Err(ParquetError::EOF(format!(
                "range {start}..{end} beyond the file's {} bytes",
                whole.len()
            )));
        }
        Ok(whole.slice(start..end))
    }
}

/// The footer is read with this much of the file's end in the first request: Weir's footers are a few KiB
/// to a few tens, so one request almost always holds the whole of it.
const FOOTER_HINT: usize = 64 * 1024;

fn parquet_error(e: object_store::Error) -> ParquetError {
    ParquetError::External(Box::new(e))
}

impl AsyncFileReader for StoreFile {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        if let Some(whole) = &self.whole {
            return futures::future::ready(Self::cut(whole, range)).boxed();
        }
        async move {
            self.either(|store, path| {
                let range = range.clone();
                async move { store.get_range(&path, range).await }
            })
            .await
            .map_err(parquet_error)
        }
        .boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        if let Some(whole) = &self.whole {
            let cut = ranges.into_iter().map(|r| Self::cut(whole, r)).collect();
            return futures::future::ready(cut).boxed();
        }
        // `get_ranges` merges ranges that lie close together into one request.
        async move {
            self.either(|store, path| {
                let ranges = ranges.clone();
                async move { store.get_ranges(&path, &ranges).await }
            })
            .await
            .map_err(parquet_error)
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        _options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<std::sync::Arc<ParquetMetaData>>> {
        let size = self.size;
        async move {
            let metadata = ParquetMetaDataReader::new()
                .with_prefetch_hint(Some(FOOTER_HINT))
                .load_and_finish(self, size)
                .await?;
            Ok(std::sync::Arc::new(metadata))
        }
        .boxed()
    }
}

/// Opens one committed file for reading; its size is asked of the store when the log does not have it.
async fn open_file(store: &Store, committed: Committed<'_>) -> Result<StoreFile> {
    let path = &committed.path;
    let mut file = StoreFile {
        store: store.store.clone(),
        path: store.path(path),
        staged: committed.staged().map(|staged| store.path(&staged)),
        from_staging: false,
        size: committed.bytes,
        whole: None,
    };
    if file.size == 0 {
        file.size = file
            .either(|store, path| async move { store.head(&path).await })
            .await
            .with_context(|| format!("cannot read {path}"))?
            .size;
    }
    // The footer's first read would take all of a small file anyway (gold, quarantine and drops files
    // mostly are): one GET, and every read after it from memory.
    if file.size <= FOOTER_HINT as u64 {
        file.take_whole()
            .await
            .with_context(|| format!("cannot read {path}"))?;
    }
    Ok(file)
}

/// The metadata of one committed file (its row count, row groups and statistics), from its footer alone.
pub async fn file_metadata(
    store: &Store,
    file: Committed<'_>,
) -> Result<std::sync::Arc<ParquetMetaData>> {
    let mut reader = open_file(store, file).await?;
    reader
        .get_metadata(None)
        .await
        .with_context(|| format!("{} is not a readable Parquet file", file.path))
}

/// The batches of one committed file.
pub async fn read_file(store: &Store, file: Committed<'_>) -> Result<FileBatches> {
    read_file_where(store, file, None, |_| true).await
}

/// Batches of one committed file, as they are fetched and decoded.
pub type FileBatches = parquet::arrow::async_reader::ParquetRecordBatchStream<StoreFile>;

/// The batches of one committed file: only the named `columns` (all when `None`), and only the row groups
/// `keep` accepts (it sees each row group's metadata: its row count and per-column min/max). Only those
/// are fetched from the store.
pub async fn read_file_where(
    store: &Store,
    file: Committed<'_>,
    columns: Option<&[&str]>,
    keep: impl Fn(&RowGroupMetaData) -> bool,
) -> Result<FileBatches> {
    let path = &file.path;
    let mut reader = open_file(store, file).await?;
    let metadata = ArrowReaderMetadata::load_async(&mut reader, ArrowReaderOptions::new())
        .await
        .map_err(|e| match e {
            // Not found stays an object_store error, which callers tell apart (see `is_not_found`).
            ParquetError::External(inner) if inner.is::<object_store::Error>() => {
                anyhow::Error::from(*inner.downcast::<object_store::Error>().expect("checked"))
                    .context(format!("cannot read {path}"))
            }
            e => anyhow::Error::from(e).context(format!("{path} is not a readable Parquet file")),
        })?;
    let groups: Vec<usize> = (0..metadata.metadata().num_row_groups())
        .filter(|&i| keep(metadata.metadata().row_group(i)))
        .collect();
    // The bytes the read wants: the chunks of its columns in its row groups.
    let wanted: u64 = groups
        .iter()
        .flat_map(|&i| metadata.metadata().row_group(i).columns())
        .filter(|c| {
            columns.is_none_or(|names| names.contains(&c.column_path().parts()[0].as_str()))
        })
        .map(|c| c.compressed_size().max(0) as u64)
        .sum();
    if wanted > reader.size / 2 && reader.whole.is_none() {
        reader
            .take_whole()
            .await
            .with_context(|| format!("cannot read {path}"))?;
    }
    let mut builder = ParquetRecordBatchStreamBuilder::new_with_metadata(reader, metadata);
    if let Some(columns) = columns {
        let mask = ProjectionMask::columns(builder.parquet_schema(), columns.iter().copied());
        builder = builder.with_projection(mask);
    }
    builder
        .with_row_groups(groups)
        .with_batch_size(8192)
        .build()
        .with_context(|| format!("{path} is not a readable Parquet file"))
}

/// The smallest and largest value of an `INT64` column (timestamps and sequences are stored so) in a row
/// group, from its statistics; `None` when it has none.
pub fn i64_range(group: &RowGroupMetaData, column: &str) -> Option<(i64, i64)> {
    let chunk = group
        .columns()
        .iter()
        .find(|c| c.column_path().string() == column)?;
    match chunk.statistics()? {
        Statistics::Int64(s) => Some((*s.min_opt()?, *s.max_opt()?)),
        _ => None,
    }
}

/// Reads the rows of `table` timed in `[from_ms, to_ms)` from the files `records` (the commit log) hold,
/// oldest partition first, calling `each` per batch (which returns whether to go on), up to `limit` rows.
pub async fn query(
    store: &Store,
    records: &[CommitRecord],
    table: &str,
    from_ms: i64,
    to_ms: i64,
    limit: usize,
    each: impl FnMut(&RecordBatch) -> Result<bool>,
) -> Result<usize> {
    let files = files_in_range(records, table, from_ms, to_ms);
    query_files(store, &files, table, from_ms, to_ms, limit, each).await
}

/// How many files [`query_files`] opens ahead of the one it reads.
const OPEN_AHEAD: usize = 8;

/// [`query`] over the given files of `table` (some of those [`files_in_range`] gives), in their order.
pub async fn query_files(
    store: &Store,
    files: &[Committed<'_>],
    table: &str,
    from_ms: i64,
    to_ms: i64,
    limit: usize,
    mut each: impl FnMut(&RecordBatch) -> Result<bool>,
) -> Result<usize> {
    let column = time_column(table);
    let fallback = fallback_time_column(table);
    // Row groups timed wholly outside the range are not decoded (files hold an hour; queries ask for less).
    let (from_us, to_us) = (from_ms.saturating_mul(1000), to_ms.saturating_mul(1000));
    let overlaps = |g: &RowGroupMetaData| {
        let within =
            |column| i64_range(g, column).is_none_or(|(min, max)| max >= from_us && min < to_us);
        within(column) || fallback.is_some_and(within)
    };
    // Files are opened a few ahead, in order: on an object store each opening is a round trip or two, and
    // the newest hours (what recent queries read) hold many small files until compaction merges them.
    let mut opened = futures::stream::iter(files.iter().copied())
        .map(|file| {
            let overlaps = &overlaps;
            async move { (file, read_file_where(store, file, None, overlaps).await) }
        })
        .buffered(OPEN_AHEAD);
    let mut emitted = 0;
    while let Some((file, batches)) = opened.next().await {
        if emitted >= limit {
            break;
        }
        let mut batches = batches?;
        while let Some(batch) = batches.next().await {
            let batch = batch.with_context(|| format!("reading {}", file.path))?;
            let timestamps = |name: Option<&str>| -> Result<Option<&TimestampMicrosecondArray>> {
                name.and_then(|name| batch.column_by_name(name))
                    .map(|c| {
                        c.as_any()
                            .downcast_ref::<TimestampMicrosecondArray>()
                            .context("the time column is not a timestamp")
                    })
                    .transpose()
            };
            let keep = match (timestamps(Some(column))?, timestamps(fallback)?) {
                (None, None) => batch.clone(),
                (times, fallback) => {
                    let time_of = |i: usize| {
                        [times, fallback]
                            .into_iter()
                            .flatten()
                            .find(|t| t.is_valid(i))
                            .map(|t| t.value(i) / 1000)
                    };
                    let mask: arrow_array::BooleanArray = (0..batch.num_rows())
                        .map(|i| Some(time_of(i).is_some_and(|ms| ms >= from_ms && ms < to_ms)))
                        .collect();
                    arrow_select::filter::filter_record_batch(&batch, &mask)?
                }
            };
            let take = keep.num_rows().min(limit - emitted);
            if take > 0 {
                emitted += take;
                if !each(&keep.slice(0, take))? {
                    return Ok(emitted);
                }
            }
            if emitted >= limit {
                break;
            }
        }
    }
    Ok(emitted)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{ArrayRef, UInt64Array};

    use super::*;
    use crate::lake::testing::{on_memory_store, parquet_bytes};

    #[test]
    fn every_overlap_is_found_with_both_epochs() {
        let claim = |from, to, epochs| DuplicateClaim { from, to, epochs };
        // 50..=60 overlaps epoch 5's claim, which is not the claim just before it.
        assert_eq!(
            overlaps(vec![(10, 20, 6), (1, 100, 5), (50, 60, 7), (101, 200, 8)]),
            vec![claim(10, 20, [5, 6]), claim(50, 60, [5, 7])]
        );
        assert_eq!(overlaps(vec![(1, 10, 1), (11, 20, 2)]), vec![]);
        assert_eq!(
            overlaps(vec![(1, 10, 1), (5, 20, 2)]),
            vec![claim(5, 10, [1, 2])]
        );
    }

    /// Commits `bytes` as epoch 1's one file of `table`, in the partition of `hour`, with sequences
    /// `1..=rows`.
    async fn commit_one_file(
        store: &Store,
        table: &str,
        hour: i64,
        bytes: bytes::Bytes,
        rows: u64,
    ) {
        let path = format!(
            "{table}/{}/1-{rows}.parquet",
            crate::lake::rows::partition(hour)
        );
        let entry = FileEntry {
            path: path.clone(),
            rows,
            bytes: bytes.len() as u64,
            min_seq: 1,
            max_seq: rows,
        };
        store
            .store
            .put(&store.path(&path), bytes.into())
            .await
            .unwrap();
        let record = CommitRecord {
            format: CommitRecord::FORMAT,
            epoch: 1,
            host: "h".into(),
            tables: [(table.to_string(), vec![entry])].into(),
            ..CommitRecord::default()
        };
        crate::lake::log::create(store, &record).await.unwrap();
    }

    /// The `_seq` of the rows `query` gives for `[from_ms, to_ms)`, checked against the count it returns.
    async fn query_seqs(
        store: &Store,
        table: &str,
        from_ms: i64,
        to_ms: i64,
        limit: usize,
    ) -> Vec<u64> {
        let records = log::all_records(store).await.unwrap();
        let mut seqs = Vec::new();
        let n = query(store, &records, table, from_ms, to_ms, limit, |b| {
            let c = b.column_by_name("_seq").unwrap();
            let c = c.as_any().downcast_ref::<UInt64Array>().unwrap();
            seqs.extend(c.values().iter().copied());
            Ok(true)
        })
        .await
        .unwrap();
        assert_eq!(n, seqs.len());
        seqs
    }

    /// `query` returns exactly the rows timed in the range, across row groups it partly skips, up to the
    /// limit.
    #[test]
    fn a_query_returns_the_rows_of_its_range() {
        let hour = 1_764_000_000_000 / 3_600_000 * 3_600_000; // the start of an hour, in ms
        let times: Vec<i64> = (0..10).map(|i| (hour + i * 1000) * 1000).collect();
        let columns: [(&str, ArrayRef); 2] = [
            (
                "_seq",
                Arc::new(UInt64Array::from((1..=10).collect::<Vec<u64>>())),
            ),
            (
                "_event_time",
                Arc::new(TimestampMicrosecondArray::from(times)),
            ),
        ];
        let bytes = parquet_bytes(columns, Some(3));
        on_memory_store(|store| async move {
            commit_one_file(&store, "silver", hour, bytes, 10).await;
            let seqs = |from_s: i64, to_s: i64, limit: usize| {
                let (from, to) = (hour + from_s * 1000, hour + to_s * 1000);
                query_seqs(&store, "silver", from, to, limit)
            };
            assert_eq!(seqs(4, 8, 100).await, [5, 6, 7, 8]);
            assert_eq!(seqs(0, 100, 100).await, (1..=10).collect::<Vec<u64>>());
            assert_eq!(seqs(3, 100, 2).await, [4, 5]);
            assert_eq!(seqs(20, 30, 100).await, Vec::<u64>::new());
        });
    }

    /// A committed file its host did not move into place (it stopped between its record and the move) is read
    /// from the commit's staging, also when it is moved in the middle of a read; gone from both, it is not
    /// found, which readers take as a sign to read the log again.
    #[test]
    fn a_committed_file_still_staged_is_read_from_its_staging() {
        const ROWS: u64 = 2000;
        let hour = 1_764_000_000_000 / 3_600_000 * 3_600_000;
        let columns: [(&str, ArrayRef); 3] = [
            (
                "_seq",
                Arc::new(UInt64Array::from((1..=ROWS).collect::<Vec<u64>>())),
            ),
            (
                "_event_time",
                Arc::new(TimestampMicrosecondArray::from(vec![
                    hour * 1000;
                    ROWS as usize
                ])),
            ),
            // Large enough (200 kB) to be read in ranges, not in one request at its opening.
            (
                "data",
                Arc::new(arrow_array::StringArray::from_iter_values(
                    (0..ROWS).map(|i| format!("{i:0100}")),
                )),
            ),
        ];
        let bytes = parquet_bytes(columns, Some(500));
        assert!(bytes.len() > 2 * FOOTER_HINT);
        on_memory_store(|store| async move {
            let path = format!(
                "silver/{}/1-{ROWS}.parquet",
                crate::lake::rows::partition(hour)
            );
            let record = CommitRecord {
                format: CommitRecord::FORMAT,
                epoch: 1,
                host: "h".into(),
                staging: "_weir/staging/h-1".into(),
                tables: [(
                    "silver".to_string(),
                    vec![FileEntry {
                        path: path.clone(),
                        rows: ROWS,
                        bytes: bytes.len() as u64,
                        min_seq: 1,
                        max_seq: ROWS,
                    }],
                )]
                .into(),
                ..CommitRecord::default()
            };
            let (staged, in_place) = (store.path(&record.staged(&path)), store.path(&path));
            store
                .store
                .put(&staged, bytes.clone().into())
                .await
                .unwrap();
            crate::lake::log::create(&store, &record).await.unwrap();
            let all: Vec<u64> = (1..=ROWS).collect();
            assert_eq!(
                query_seqs(&store, "silver", hour, hour + 3_600_000, 5000).await,
                all
            );

            // Its footer read from the staging, then moved into place before its rows are read.
            let records = log::all_records(&store).await.unwrap();
            let files = files_in_range(&records, "silver", i64::MIN, i64::MAX);
            let batches = read_file_where(&store, files[0], Some(&["_seq"]), |_| true)
                .await
                .unwrap();
            store
                .store
                .put(&in_place, bytes.clone().into())
                .await
                .unwrap();
            store.store.delete(&staged).await.unwrap();
            let batches: Vec<RecordBatch> = batches.try_collect().await.unwrap();
            let seqs: Vec<u64> = batches
                .iter()
                .flat_map(|b| {
                    let c = b.column(0).as_any().downcast_ref::<UInt64Array>().unwrap();
                    c.values().to_vec()
                })
                .collect();
            assert_eq!(seqs, all);

            // Gone from both (a compaction replaced it), also from under a read that found it staged: not
            // found, at its path.
            let not_found_at = |e: &anyhow::Error| {
                e.chain()
                    .find_map(|e| match e.downcast_ref::<object_store::Error>() {
                        Some(object_store::Error::NotFound { path, .. }) => Some(path.clone()),
                        _ => None,
                    })
            };
            store.store.delete(&in_place).await.unwrap();
            let e = query(&store, &records, "silver", i64::MIN, i64::MAX, 10, |_| {
                Ok(true)
            })
            .await
            .unwrap_err();
            assert_eq!(
                not_found_at(&e).as_deref(),
                Some(in_place.as_ref()),
                "{e:#}"
            );
            store.store.put(&staged, bytes.into()).await.unwrap();
            let batches = read_file_where(&store, files[0], Some(&["_seq"]), |_| true)
                .await
                .unwrap();
            store.store.delete(&staged).await.unwrap();
            let e = anyhow::Error::from(batches.try_collect::<Vec<_>>().await.unwrap_err());
            assert_eq!(
                not_found_at(&e).as_deref(),
                Some(in_place.as_ref()),
                "{e:#}"
            );
        });
    }

    /// `verify` reports a file that no longer matches its commit (cut short, or overwritten with something
    /// that is not Parquet) as a problem, instead of stopping at it.
    #[test]
    fn verify_reports_files_that_changed_since_their_commit() {
        let hour = 1_764_000_000_000 / 3_600_000 * 3_600_000;
        let columns: [(&str, ArrayRef); 1] = [("_seq", Arc::new(UInt64Array::from(vec![1, 2, 3])))];
        let bytes = parquet_bytes(columns, None);
        on_memory_store(|store| async move {
            commit_one_file(&store, "silver", hour, bytes.clone(), 3).await;
            assert!(verify(&store, true).await.unwrap().is_clean());
            let path = format!("silver/{}/1-3.parquet", crate::lake::rows::partition(hour));
            let put = |data: Vec<u8>| {
                let (store, path) = (store.clone(), path.clone());
                async move {
                    store
                        .store
                        .put(&store.path(&path), data.into())
                        .await
                        .unwrap();
                }
            };
            put(vec![b'x'; bytes.len()]).await;
            let problems = verify(&store, true).await.unwrap();
            assert_eq!(problems.unreadable.len(), 1, "{problems:?}");
            assert!(problems.unreadable[0].starts_with(&path));
            assert!(
                verify(&store, false).await.unwrap().is_clean(),
                "a shallow verify reads no footer"
            );

            put(bytes[..bytes.len() - 1].to_vec()).await;
            let problems = verify(&store, false).await.unwrap();
            assert_eq!(problems.wrong_size.len(), 1, "{problems:?}");
            assert!(!problems.is_clean());
        });
    }

    /// A store that leaves one object out of its listings, as an S3-compatible server was seen to (once,
    /// after a restart): found by name, invisible to engines that read the directories.
    #[derive(Debug)]
    struct Unlisting {
        inner: Arc<dyn object_store::ObjectStore>,
        hidden: object_store::path::Path,
    }

    impl std::fmt::Display for Unlisting {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{} (not listing {})", self.inner, self.hidden)
        }
    }

    #[async_trait::async_trait]
    impl object_store::ObjectStore for Unlisting {
        async fn put_opts(
            &self,
            location: &object_store::path::Path,
            payload: object_store::PutPayload,
            opts: object_store::PutOptions,
        ) -> object_store::Result<object_store::PutResult> {
            self.inner.put_opts(location, payload, opts).await
        }

        async fn put_multipart_opts(
            &self,
            location: &object_store::path::Path,
            opts: object_store::PutMultipartOptions,
        ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
            self.inner.put_multipart_opts(location, opts).await
        }

        async fn get_opts(
            &self,
            location: &object_store::path::Path,
            options: object_store::GetOptions,
        ) -> object_store::Result<object_store::GetResult> {
            self.inner.get_opts(location, options).await
        }

        fn delete_stream(
            &self,
            locations: futures::stream::BoxStream<
                'static,
                object_store::Result<object_store::path::Path>,
            >,
        ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::path::Path>>
        {
            self.inner.delete_stream(locations)
        }

        fn list(
            &self,
            prefix: Option<&object_store::path::Path>,
        ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>>
        {
            let hidden = self.hidden.clone();
            self.inner
                .list(prefix)
                .try_filter(move |m| futures::future::ready(m.location != hidden))
                .boxed()
        }

        async fn list_with_delimiter(
            &self,
            prefix: Option<&object_store::path::Path>,
        ) -> object_store::Result<object_store::ListResult> {
            self.inner.list_with_delimiter(prefix).await
        }

        async fn copy_opts(
            &self,
            from: &object_store::path::Path,
            to: &object_store::path::Path,
            options: object_store::CopyOptions,
        ) -> object_store::Result<()> {
            self.inner.copy_opts(from, to, options).await
        }
    }

    /// `verify` reports a committed file that the store finds by name but does not list: the rows of such a
    /// file are lost to DuckDB or pyarrow reading the directories.
    #[test]
    fn verify_reports_files_the_store_does_not_list() {
        let hour = 1_764_000_000_000 / 3_600_000 * 3_600_000;
        let columns: [(&str, ArrayRef); 1] = [("_seq", Arc::new(UInt64Array::from(vec![1, 2, 3])))];
        let bytes = parquet_bytes(columns, None);
        on_memory_store(|store| async move {
            commit_one_file(&store, "silver", hour, bytes, 3).await;
            assert!(verify(&store, true).await.unwrap().is_clean());
            let path = format!("silver/{}/1-3.parquet", crate::lake::rows::partition(hour));
            let unlisting = Store {
                store: Arc::new(Unlisting {
                    inner: store.store.clone(),
                    hidden: store.path(&path),
                }),
                prefix: store.prefix.clone(),
                url: store.url.clone(),
            };
            let problems = verify(&unlisting, true).await.unwrap();
            assert_eq!(problems.unlisted, [path], "{problems:?}");
            assert!(problems.missing.is_empty(), "{problems:?}");
            assert!(!problems.is_clean());
        });
    }

    /// Quarantine rows are timed as they are partitioned: by the event's time, or when it was quarantined
    /// for an event whose time could not be read. A late event quarantined hours after its time is found
    /// in its event's hour.
    #[test]
    fn quarantine_rows_are_found_by_their_event_time() {
        let hour = 1_764_000_000_000 / 3_600_000 * 3_600_000;
        let us = |ms: i64| ms * 1000;
        let columns: [(&str, ArrayRef); 3] = [
            ("_seq", Arc::new(UInt64Array::from(vec![1, 2, 3]))),
            (
                "event_time",
                Arc::new(TimestampMicrosecondArray::from(vec![
                    Some(us(hour + 1000)),
                    None,
                    Some(us(hour - 7_200_000)),
                ])),
            ),
            (
                "quarantined_at",
                Arc::new(TimestampMicrosecondArray::from(vec![
                    us(hour + 10_800_000),
                    us(hour + 2000),
                    us(hour + 3000),
                ])),
            ),
        ];
        let bytes = parquet_bytes(columns, None);
        on_memory_store(|store| async move {
            commit_one_file(&store, "quarantine_silver", hour, bytes, 3).await;
            let seqs = query_seqs(&store, "quarantine_silver", hour, hour + 60_000, 100).await;
            assert_eq!(seqs, [1, 2]);
        });
    }

    /// Row groups are told apart by the min/max of sequences (unsigned) and timestamps, and
    /// `read_file_where` decodes only those asked for, with only the columns asked for.
    #[test]
    fn row_groups_are_chosen_by_their_statistics() {
        let columns: [(&str, ArrayRef); 3] = [
            ("_seq", Arc::new(UInt64Array::from(vec![1, 2, 3, 4, 5, 6]))),
            (
                "ingest_time",
                Arc::new(TimestampMicrosecondArray::from(vec![
                    10, 20, 30, 40, 50, 60,
                ])),
            ),
            (
                "data",
                Arc::new(arrow_array::StringArray::from(vec!["x"; 6])),
            ),
        ];
        let bytes = parquet_bytes(columns, Some(2));
        on_memory_store(|store| async move {
            store
                .store
                .put(&store.path("f.parquet"), bytes.into())
                .await
                .unwrap();
            let keep = |g: &RowGroupMetaData| {
                assert!(i64_range(g, "data").is_none(), "not an INT64 column");
                let (a, b) = i64_range(g, "_seq").unwrap();
                let (t0, t1) = i64_range(g, "ingest_time").unwrap();
                assert_eq!((t0, t1), (a * 10, b * 10));
                b >= 3
            };
            // No size: the reader asks the store for it.
            let file = FileEntry {
                path: "f.parquet".into(),
                rows: 6,
                bytes: 0,
                min_seq: 1,
                max_seq: 6,
            };
            let batches: Vec<RecordBatch> =
                read_file_where(&store, Committed::in_place(&file), Some(&["_seq"]), keep)
                    .await
                    .unwrap()
                    .try_collect()
                    .await
                    .unwrap();
            let seqs: Vec<u64> = batches
                .iter()
                .flat_map(|b| {
                    assert_eq!(b.num_columns(), 1);
                    let c = b.column(0).as_any().downcast_ref::<UInt64Array>().unwrap();
                    c.values().to_vec()
                })
                .collect();
            assert_eq!(seqs, [3, 4, 5, 6]);
        });
    }
}
