//! Parquet files being written for one commit: one open writer per table and partition, encoding (zstd) as
//! batches arrive so an epoch in progress holds compressed bytes, not rows. A file that grows past
//! `max_file_bytes` is closed and the next batch starts another part.

use std::collections::BTreeMap;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

/// A finished file, ready to upload.
#[derive(Debug)]
pub struct FinishedFile {
    pub table: String,
    /// `dt=.../hour=.../<name>.parquet`, relative to the table.
    pub relative: String,
    pub bytes: Bytes,
    pub rows: u64,
    pub min_seq: u64,
    pub max_seq: u64,
}

struct Open {
    writer: ArrowWriter<Vec<u8>>,
    schema: SchemaRef,
    rows: u64,
    min_seq: u64,
    max_seq: u64,
    part: u32,
}

/// Writers for one epoch.
pub struct EpochFiles {
    /// Tag in every file name (the host id): hosts that share a lake never collide.
    tag: String,
    max_file_bytes: usize,
    row_group_rows: usize,
    /// Key-value metadata written into every file (lineage: plugin versions, epoch).
    metadata: Vec<(String, String)>,
    open: BTreeMap<(String, String), Open>,
    done: Vec<FinishedFile>,
}

fn properties(
    row_group_rows: usize,
    metadata: &[(String, String)],
    schema: &arrow_schema::Schema,
) -> WriterProperties {
    let mut builder = WriterProperties::builder();
    // Dictionaries pay off for repeated text (wiki, type, user, lineage); numbers and timestamps are mostly
    // distinct, so interning them is wasted work (they compress well enough plain, under zstd).
    for field in schema.fields() {
        if !matches!(field.data_type(), arrow_schema::DataType::Utf8) {
            builder = builder
                .set_column_dictionary_enabled(ColumnPath::from(field.name().as_str()), false);
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

impl EpochFiles {
    pub fn new(tag: &str, max_file_bytes: usize, metadata: Vec<(String, String)>) -> Self {
        EpochFiles {
            tag: tag.to_string(),
            max_file_bytes,
            row_group_rows: 128 * 1024,
            metadata,
            open: BTreeMap::new(),
            done: Vec::new(),
        }
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
        let key = (table.to_string(), partition.to_string());
        // A new schema (gold tables grow columns) or a full file closes the current part.
        let roll = self.open.get(&key).is_some_and(|o| {
            o.schema != batch.schema()
                || o.writer.bytes_written() + o.writer.in_progress_size() >= self.max_file_bytes
        });
        let mut part = 0;
        if roll {
            let open = self.open.remove(&key).expect("checked above");
            part = open.part + 1;
            self.finish(&key, open)?;
        }
        let open = match self.open.entry(key) {
            std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::btree_map::Entry::Vacant(v) => {
                let writer = ArrowWriter::try_new(
                    Vec::with_capacity(1 << 20),
                    batch.schema(),
                    Some(properties(
                        self.row_group_rows,
                        &self.metadata,
                        &batch.schema(),
                    )),
                )?;
                v.insert(Open {
                    writer,
                    schema: batch.schema(),
                    rows: 0,
                    min_seq: seqs.0,
                    max_seq: seqs.1,
                    part,
                })
            }
        };
        open.writer.write(batch)?;
        open.rows += batch.num_rows() as u64;
        open.min_seq = open.min_seq.min(seqs.0);
        open.max_seq = open.max_seq.max(seqs.1);
        Ok(())
    }

    fn finish(&mut self, key: &(String, String), open: Open) -> anyhow::Result<()> {
        let bytes = open.writer.into_inner()?;
        // Named from the sequences it holds: `<first seq>-<last seq>-<host>-<part>.parquet`.
        let name = format!(
            "{:020}-{:020}-{}-{:03}.parquet",
            open.min_seq, open.max_seq, self.tag, open.part
        );
        self.done.push(FinishedFile {
            table: key.0.clone(),
            relative: format!("{}/{name}", key.1),
            bytes: Bytes::from(bytes),
            rows: open.rows,
            min_seq: open.min_seq,
            max_seq: open.max_seq,
        });
        Ok(())
    }

    /// Closes every file; returns them all.
    pub fn finish_all(mut self) -> anyhow::Result<Vec<FinishedFile>> {
        let open = std::mem::take(&mut self.open);
        for (key, file) in open {
            self.finish(&key, file)?;
        }
        Ok(self.done)
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty() && self.done.is_empty()
    }

    /// Bytes encoded so far (for commit-size triggers and memory accounting).
    pub fn bytes(&self) -> usize {
        self.open
            .values()
            .map(|o| o.writer.bytes_written() + o.writer.in_progress_size())
            .sum::<usize>()
            + self.done.iter().map(|f| f.bytes.len()).sum::<usize>()
    }
}
