//! What the lake's unit tests share: Parquet bytes from a few columns, and an in-memory store to put them on.

use std::future::Future;

use arrow_array::{ArrayRef, RecordBatch};
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;

use super::store::Store;
use super::{LakeConfig, StoreConfig};

/// `columns` as one Parquet file, in row groups of at most `row_group_rows` rows (one row group when `None`).
pub(crate) fn parquet_bytes<'a>(
    columns: impl IntoIterator<Item = (&'a str, ArrayRef)>,
    row_group_rows: Option<usize>,
) -> Bytes {
    let batch = RecordBatch::try_from_iter(columns).unwrap();
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(row_group_rows)
        .build();
    let mut writer = ArrowWriter::try_new(Vec::new(), batch.schema(), Some(props)).unwrap();
    writer.write(&batch).unwrap();
    Bytes::from(writer.into_inner().unwrap())
}

/// Runs `test` on a fresh `memory://` store, on a runtime of its own.
pub(crate) fn on_memory_store<T: Future>(test: impl FnOnce(Store) -> T) -> T::Output {
    let store = Store::open(&StoreConfig {
        url: "memory://".into(),
        ..Default::default()
    })
    .unwrap();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(test(store))
}

/// Runs `future` on a runtime of its own.
pub(crate) fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

/// A lake in a temporary directory (kept while the first is).
pub(crate) fn local_lake() -> (tempfile::TempDir, LakeConfig) {
    let dir = tempfile::tempdir().unwrap();
    let config = LakeConfig {
        url: dir.path().to_str().unwrap().into(),
        ..Default::default()
    };
    (dir, config)
}
