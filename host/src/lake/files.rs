//! Parquet files being written for one commit: one open writer per table and partition, encoding (zstd) as
//! batches arrive so an epoch in progress holds compressed bytes, not rows. A file that grows past
//! `max_file_bytes` is closed and the next batch starts another part.
//!
//! A row group is closed once its encoded pages reach [`ROW_GROUP_BYTES`] (or [`ROW_GROUP_ROWS`] rows),
//! and what a writer has finished goes to a [`SpillSink`]: a large file (an epoch's bronze) waits for its
//! upload on disk, not in memory.
//!
//! A Parquet writer costs about a megabyte before its first row (a page buffer and a zstd context per
//! column), and late or future events scatter a few rows over many hourly partitions. So a partition's
//! batches wait as Arrow rows until it has [`WRITER_AFTER_ROWS`]; small partitions are encoded in one go
//! when the epoch ends.
//!
//! The pipeline encodes on a thread of its own ([`EpochFiles::background`]): Parquet and zstd are a large
//! share of a batch's cost, and the thread that runs the plugins should not wait for them. The batches go
//! through a short bounded queue, so a slow encoder slows the pipeline instead of piling up rows.

use std::collections::BTreeMap;

use anyhow::Context;
use arrow_array::{Array, RecordBatch, StringArray};
use arrow_schema::{DataType, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use super::schema;
use super::spill::{FileData, SpillSink, spill_after};

/// A finished file, ready to upload.
#[derive(Debug)]
pub struct FinishedFile {
    pub table: String,
    /// `dt=.../hour=.../<name>.parquet`, relative to the table.
    pub relative: String,
    pub data: FileData,
    pub rows: u64,
    pub min_seq: u64,
    pub max_seq: u64,
}

struct Open {
    /// `None` while the partition's rows (`rows` of them) are few enough to wait in `pending`.
    writer: Option<ArrowWriter<SpillSink>>,
    pending: Vec<RecordBatch>,
    schema: SchemaRef,
    rows: u64,
    min_seq: u64,
    max_seq: u64,
    part: u32,
}

/// Writers for one epoch, encoding inline or on a thread of their own.
pub struct EpochFiles {
    mode: Mode,
}

enum Mode {
    Inline(Encoder),
    Background {
        queue: std::sync::mpsc::SyncSender<Append>,
        worker: std::thread::JoinHandle<anyhow::Result<Vec<FinishedFile>>>,
    },
    /// The background encoder stopped on this error: the epoch cannot be committed.
    Failed(String),
}

struct Append {
    table: String,
    partition: String,
    batch: RecordBatch,
    seqs: (u64, u64),
}

/// Batches waiting for the background encoder; a full queue blocks the pipeline (backpressure).
const QUEUE: usize = 16;

/// Rows a partition collects before it gets a Parquet writer of its own.
const WRITER_AFTER_ROWS: usize = 4096;

/// The open writers and finished files of one epoch.
struct Encoder {
    /// Tag in every file name (the host id): hosts that share a lake never collide.
    tag: String,
    max_file_bytes: usize,
    row_group_rows: usize,
    /// Key-value metadata written into every file (lineage: plugin versions, epoch).
    metadata: Vec<(String, String)>,
    open: BTreeMap<(String, String), Open>,
    done: Vec<FinishedFile>,
}

/// Rows per row group: large enough for engines to read efficiently, small enough to prune by.
pub(super) const ROW_GROUP_ROWS: usize = 128 * 1024;

/// Encoded bytes at which a row group is closed before it has [`ROW_GROUP_ROWS`] rows: a row group's pages
/// stay in memory until it closes, for every open writer (a table and partition), and 128k raw events are
/// ~25 MB of bronze. Bronze and silver close row groups here; gold tables reach the row limit first. 4 MiB
/// rather than 8: peak RSS of the 1M-event pipeline 309-324 MB (median 316) against 313-336 (median 327) in
/// six same-hour pairs, for a lake ~1.7 % larger (more row groups, each with its own dictionaries).
pub(super) const ROW_GROUP_BYTES: usize = 4 << 20;

/// Writer settings for a file whose first batch is `first`.
pub(super) fn properties(
    row_group_rows: usize,
    metadata: &[(String, String)],
    first: &RecordBatch,
) -> WriterProperties {
    let mut builder = WriterProperties::builder();
    for (field, column) in first.schema().fields().iter().zip(first.columns()) {
        let path = ColumnPath::from(field.name().as_str());
        // Dictionaries pay off for repeated text (wiki, type, user, lineage); numbers and timestamps are
        // mostly distinct, so interning them is wasted work (they compress well enough plain, under zstd).
        let text = matches!(field.data_type(), DataType::Utf8);
        let distinct_text = text
            && (schema::DISTINCT_TEXT.contains(&field.name().as_str()) || mostly_distinct(column));
        if !text || distinct_text {
            builder = builder.set_column_dictionary_enabled(path.clone(), false);
        }
        // Text that differs in every row (ids, titles, comments, raw payloads) gains nothing from min/max:
        // no engine prunes by them, and computing them compares every value.
        if distinct_text {
            builder = builder.set_column_statistics_enabled(path, EnabledStatistics::None);
        }
    }
    builder
        // Min/max per column chunk (what engines prune files and row groups by), not per page.
        .set_statistics_enabled(EnabledStatistics::Chunk)
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(1).expect("a valid level"),
        ))
        .set_max_row_group_row_count(Some(row_group_rows))
        .set_key_value_metadata(Some(
            metadata
                .iter()
                .map(|(k, v)| parquet::file::metadata::KeyValue::new(k.clone(), v.clone()))
                .collect(),
        ))
        .build()
}

/// Whether a text column's first values are nearly all different (titles, comments, request ids), judged
/// from a sample large enough to tell: interning such a column fills a dictionary page only to fall back to
/// plain encoding, at the cost of hashing every value. Small batches keep the dictionary.
fn mostly_distinct(column: &dyn Array) -> bool {
    const SAMPLE: usize = 128;
    let Some(text) = column.as_any().downcast_ref::<StringArray>() else {
        return false;
    };
    if text.len() - text.null_count() < SAMPLE {
        return false;
    }
    let distinct: std::collections::HashSet<&str> = text.iter().flatten().take(SAMPLE).collect();
    distinct.len() * 4 > SAMPLE * 3
}

impl EpochFiles {
    /// Encodes on the caller's thread.
    pub fn new(tag: &str, max_file_bytes: usize, metadata: Vec<(String, String)>) -> Self {
        EpochFiles {
            mode: Mode::Inline(Encoder::new(tag, max_file_bytes, metadata)),
        }
    }

    /// Encodes on a thread of its own; [`EpochFiles::finish_all`] waits for it.
    pub fn background(
        tag: &str,
        max_file_bytes: usize,
        metadata: Vec<(String, String)>,
    ) -> anyhow::Result<Self> {
        let mut encoder = Encoder::new(tag, max_file_bytes, metadata);
        let (queue, batches) = std::sync::mpsc::sync_channel::<Append>(QUEUE);
        let worker = std::thread::Builder::new()
            .name("weir-parquet".into())
            .spawn(move || {
                for a in batches {
                    encoder.append(&a.table, &a.partition, &a.batch, a.seqs)?;
                }
                encoder.finish_all()
            })
            .context("starting the Parquet encoder thread")?;
        Ok(EpochFiles {
            mode: Mode::Background { queue, worker },
        })
    }

    /// Appends a batch to `table`'s file for `partition`. `seqs` are the smallest and largest stream
    /// sequences in the batch (for the file's name and the commit log).
    pub fn append(
        &mut self,
        table: &str,
        partition: &str,
        batch: &RecordBatch,
        seqs: (u64, u64),
    ) -> anyhow::Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        match &mut self.mode {
            Mode::Inline(encoder) => encoder.append(table, partition, batch, seqs),
            Mode::Background { queue, .. } => {
                let sent = queue.send(Append {
                    table: table.to_string(),
                    partition: partition.to_string(),
                    batch: batch.clone(),
                    seqs,
                });
                if sent.is_ok() {
                    return Ok(());
                }
                // The encoder stopped on an error (its end of the queue is gone): that error is the one to
                // report, now and at commit.
                let Mode::Background { worker, .. } =
                    std::mem::replace(&mut self.mode, Mode::Failed(String::new()))
                else {
                    unreachable!("matched as background above")
                };
                let error = match join(worker) {
                    Err(e) => format!("{e:#}"),
                    Ok(_) => "the Parquet encoder stopped".to_string(),
                };
                self.mode = Mode::Failed(error.clone());
                Err(anyhow::anyhow!(error))
            }
            Mode::Failed(error) => Err(anyhow::anyhow!(error.clone())),
        }
    }

    /// Closes every file; returns them all.
    pub fn finish_all(self) -> anyhow::Result<Vec<FinishedFile>> {
        match self.mode {
            Mode::Inline(encoder) => encoder.finish_all(),
            Mode::Background { queue, worker } => {
                // Closing the queue ends the encoder's loop.
                drop(queue);
                join(worker)
            }
            Mode::Failed(error) => Err(anyhow::anyhow!(error)),
        }
    }
}

fn join(
    worker: std::thread::JoinHandle<anyhow::Result<Vec<FinishedFile>>>,
) -> anyhow::Result<Vec<FinishedFile>> {
    worker
        .join()
        .unwrap_or_else(|_| Err(anyhow::anyhow!("the Parquet encoder thread panicked")))
}

/// A writer for a partition, with what waited for it encoded; the per-column choices are made from the
/// largest batch, the best sample.
fn writer_for(
    schema: &SchemaRef,
    pending: Vec<RecordBatch>,
    row_group_rows: usize,
    metadata: &[(String, String)],
) -> anyhow::Result<ArrowWriter<SpillSink>> {
    let sample = pending
        .iter()
        .max_by_key(|b| b.num_rows())
        .expect("a partition is opened by a batch");
    let properties = properties(row_group_rows, metadata, sample);
    let mut writer = writer(schema, properties)?;
    for batch in &pending {
        write(&mut writer, batch)?;
    }
    Ok(writer)
}

/// A Parquet writer whose finished row groups go to a [`SpillSink`]; write to it with [`write`].
pub(super) fn writer(
    schema: &SchemaRef,
    properties: WriterProperties,
) -> anyhow::Result<ArrowWriter<SpillSink>> {
    Ok(ArrowWriter::try_new(
        SpillSink::new(spill_after()),
        schema.clone(),
        Some(properties),
    )?)
}

/// Writes a batch, closing the row group once its pages reach [`ROW_GROUP_BYTES`].
pub(super) fn write(
    writer: &mut ArrowWriter<SpillSink>,
    batch: &RecordBatch,
) -> anyhow::Result<()> {
    writer.write(batch)?;
    if writer.in_progress_size() >= ROW_GROUP_BYTES {
        writer.flush()?;
    }
    Ok(())
}

impl Encoder {
    fn new(tag: &str, max_file_bytes: usize, metadata: Vec<(String, String)>) -> Self {
        Encoder {
            tag: tag.to_string(),
            max_file_bytes,
            row_group_rows: ROW_GROUP_ROWS,
            metadata,
            open: BTreeMap::new(),
            done: Vec::new(),
        }
    }

    fn append(
        &mut self,
        table: &str,
        partition: &str,
        batch: &RecordBatch,
        seqs: (u64, u64),
    ) -> anyhow::Result<()> {
        let key = (table.to_string(), partition.to_string());
        // A new schema (gold tables grow columns) or a full file closes the current part.
        let roll = self.open.get(&key).is_some_and(|o| {
            o.schema != batch.schema()
                || o.writer.as_ref().is_some_and(|w| {
                    w.bytes_written() + w.in_progress_size() >= self.max_file_bytes
                })
        });
        let mut part = 0;
        if roll {
            let open = self.open.remove(&key).expect("checked above");
            part = open.part + 1;
            self.finish(&key, open)?;
        }
        let open = self.open.entry(key).or_insert_with(|| Open {
            writer: None,
            pending: Vec::new(),
            schema: batch.schema(),
            rows: 0,
            min_seq: seqs.0,
            max_seq: seqs.1,
            part,
        });
        open.rows += batch.num_rows() as u64;
        open.min_seq = open.min_seq.min(seqs.0);
        open.max_seq = open.max_seq.max(seqs.1);
        match &mut open.writer {
            Some(writer) => write(writer, batch)?,
            None => {
                open.pending.push(batch.clone());
                if open.rows >= WRITER_AFTER_ROWS as u64 {
                    let pending = std::mem::take(&mut open.pending);
                    open.writer = Some(writer_for(
                        &open.schema,
                        pending,
                        self.row_group_rows,
                        &self.metadata,
                    )?);
                }
            }
        }
        Ok(())
    }

    fn finish(&mut self, key: &(String, String), open: Open) -> anyhow::Result<()> {
        let writer = match open.writer {
            Some(writer) => writer,
            None => writer_for(
                &open.schema,
                open.pending,
                self.row_group_rows,
                &self.metadata,
            )?,
        };
        let data = writer.into_inner()?.finish()?;
        // Named from the sequences it holds: `<first seq>-<last seq>-<host>-<part>.parquet`.
        let name = format!(
            "{:020}-{:020}-{}-{:03}.parquet",
            open.min_seq, open.max_seq, self.tag, open.part
        );
        self.done.push(FinishedFile {
            table: key.0.clone(),
            relative: format!("{}/{name}", key.1),
            data,
            rows: open.rows,
            min_seq: open.min_seq,
            max_seq: open.max_seq,
        });
        Ok(())
    }

    fn finish_all(mut self) -> anyhow::Result<Vec<FinishedFile>> {
        let open = std::mem::take(&mut self.open);
        for (key, file) in open {
            self.finish(&key, file)?;
        }
        Ok(self.done)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{ArrayRef, UInt64Array};
    use arrow_schema::{Field, Schema};
    use bytes::Bytes;
    use parquet::file::reader::{FileReader, SerializedFileReader};

    use super::*;

    /// Which columns of the file got a dictionary page, and which have min/max statistics.
    fn encodings(bytes: Bytes) -> Vec<(String, bool, bool)> {
        let reader = SerializedFileReader::new(bytes).unwrap();
        let group = reader.metadata().row_group(0);
        group
            .columns()
            .iter()
            .map(|c| {
                (
                    c.column_path().string(),
                    c.dictionary_page_offset().is_some(),
                    c.statistics().is_some_and(|s| s.min_bytes_opt().is_some()),
                )
            })
            .collect()
    }

    #[test]
    fn dictionaries_only_for_repeated_text() {
        let n = 1000;
        let schema = Arc::new(Schema::new(vec![
            Field::new("_seq", DataType::UInt64, false),
            Field::new("_event_id", DataType::Utf8, false),
            Field::new("wiki", DataType::Utf8, false),
            Field::new("title", DataType::Utf8, false),
        ]));
        let text = |f: &dyn Fn(u64) -> String| -> ArrayRef {
            Arc::new(StringArray::from_iter_values((0..n).map(f)))
        };
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(UInt64Array::from_iter_values(0..n)),
                text(&|i| format!("{i:08x}-id")),
                text(&|i| format!("wiki{}", i % 7)),
                text(&|i| format!("Page {i}")),
            ],
        )
        .unwrap();
        for mut files in [
            EpochFiles::new("t", 1 << 30, Vec::new()),
            EpochFiles::background("t", 1 << 30, Vec::new()).unwrap(),
        ] {
            files.append("silver", "p", &batch, (0, n - 1)).unwrap();
            let file = files.finish_all().unwrap().pop().unwrap();
            assert_eq!(file.rows, n);
            assert_eq!(
                encodings(file.data.to_bytes().unwrap()),
                vec![
                    ("_seq".to_string(), false, true),
                    ("_event_id".to_string(), false, false),
                    ("wiki".to_string(), true, true),
                    ("title".to_string(), false, false),
                ]
            );
        }
    }

    /// Small partitions wait as rows and are written at the end, large ones get a writer on the way; either
    /// way every row lands in its partition's file once.
    #[test]
    fn small_and_large_partitions_hold_every_row() {
        let schema = Arc::new(Schema::new(vec![Field::new(
            "_seq",
            DataType::UInt64,
            false,
        )]));
        let batch = |from: u64, to: u64| {
            RecordBatch::try_new(
                schema.clone(),
                vec![Arc::new(UInt64Array::from_iter_values(from..to)) as ArrayRef],
            )
            .unwrap()
        };
        let mut files = EpochFiles::new("t", 1 << 30, Vec::new());
        files
            .append("silver", "large", &batch(0, 3000), (0, 2999))
            .unwrap();
        files
            .append("silver", "small", &batch(3000, 3010), (3000, 3009))
            .unwrap();
        files
            .append("silver", "large", &batch(3010, 6010), (3010, 6009))
            .unwrap();
        files
            .append("silver", "small", &batch(6010, 6012), (6010, 6011))
            .unwrap();
        let mut done = files.finish_all().unwrap();
        done.sort_by(|a, b| a.relative.cmp(&b.relative));
        let rows: Vec<(String, u64, u64, u64)> = done
            .iter()
            .map(|f| {
                let reader = SerializedFileReader::new(f.data.to_bytes().unwrap()).unwrap();
                assert_eq!(reader.metadata().file_metadata().num_rows() as u64, f.rows);
                (f.relative.clone(), f.rows, f.min_seq, f.max_seq)
            })
            .collect();
        assert_eq!(
            rows,
            vec![
                (
                    "large/00000000000000000000-00000000000000006009-t-000.parquet".to_string(),
                    6000,
                    0,
                    6009
                ),
                (
                    "small/00000000000000003000-00000000000000006011-t-000.parquet".to_string(),
                    12,
                    3000,
                    6011
                ),
            ]
        );
    }

    /// A wide partition (an epoch's bronze) closes row groups by encoded size, and its file waits on disk;
    /// every row reads back, in order.
    #[test]
    fn large_files_close_row_groups_by_size_and_spill() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("_seq", DataType::UInt64, false),
            Field::new("raw", DataType::Utf8, false),
        ]));
        // ~300 bytes of poorly compressible text per row: ~30 MB over 100k rows.
        let mut x = 1u64;
        let mut text = |_| {
            (0..19)
                .map(|_| {
                    x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                    format!("{:016x}", x)
                })
                .collect::<String>()
        };
        let mut files = EpochFiles::new("t", 1 << 30, Vec::new());
        let rows = 100_000u64;
        for from in (0..rows).step_by(4096) {
            let to = (from + 4096).min(rows);
            let batch = RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(UInt64Array::from_iter_values(from..to)) as ArrayRef,
                    Arc::new(StringArray::from_iter_values((from..to).map(&mut text))),
                ],
            )
            .unwrap();
            files.append("bronze", "p", &batch, (from, to - 1)).unwrap();
        }
        let file = files.finish_all().unwrap().pop().unwrap();
        assert!(matches!(file.data, FileData::Disk { .. }), "spilled");
        let reader = SerializedFileReader::new(file.data.to_bytes().unwrap()).unwrap();
        let groups = reader.metadata().row_groups();
        assert!(groups.len() > 1, "row groups closed by size");
        assert!(
            groups
                .iter()
                .all(|g| g.compressed_size() as usize <= 2 * ROW_GROUP_BYTES),
            "{:?}",
            groups
                .iter()
                .map(|g| g.compressed_size())
                .collect::<Vec<_>>()
        );
        let seqs: Vec<u64> = parquet::arrow::arrow_reader::ParquetRecordBatchReader::try_new(
            file.data.to_bytes().unwrap(),
            8192,
        )
        .unwrap()
        .flat_map(|b| {
            let b = b.unwrap();
            let seq = b.column(0).as_any().downcast_ref::<UInt64Array>().unwrap();
            seq.values().to_vec()
        })
        .collect();
        assert_eq!(seqs, (0..rows).collect::<Vec<_>>());
    }
}
