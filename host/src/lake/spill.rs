//! Where a Parquet file's bytes wait between encoding and upload: in memory while small, in an unnamed
//! temporary file once large. An epoch's bronze file (~100k raw events) is ~20 MB compressed, and held in
//! memory with the rest of the epoch's files it was the host's largest allocation; spilled, it costs page
//! cache, which the kernel can drop. Spilled files upload in parts, so an upload does not read them back
//! whole either.
//!
//! The temporary files have no name (`O_TMPFILE`, in `TMPDIR`): the kernel removes them when they are
//! closed, also when the process dies, so a crash leaves nothing to clean up. `TMPDIR` should be on disk:
//! on a tmpfs the spilled bytes are memory again. A crash in the middle of a multipart upload can leave
//! its parts at an S3 store until a bucket lifecycle rule (`AbortIncompleteMultipartUpload`) removes them.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::sync::Arc;

use anyhow::Result;
use bytes::Bytes;
use object_store::ObjectStoreExt;
use object_store::path::Path;

/// Bytes a file keeps in memory before it moves to a temporary file: 4 MiB, or `WEIR_LAKE_SPILL_BYTES` (the
/// tests against S3 and Azure set it low, so every file there uploads in parts).
pub fn spill_after() -> usize {
    static AFTER: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *AFTER.get_or_init(|| {
        std::env::var("WEIR_LAKE_SPILL_BYTES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(4 << 20)
    })
}

/// Size of the parts a spilled file is uploaded in (S3 wants at least 5 MiB for all but the last).
const PART: u64 = 8 << 20;

/// A `Write` sink for a Parquet writer: memory first, a temporary file beyond `spill_after` bytes.
pub struct SpillSink {
    memory: Vec<u8>,
    file: Option<BufWriter<File>>,
    len: u64,
    spill_after: usize,
    dir: std::path::PathBuf,
}

impl SpillSink {
    /// Spills into `TMPDIR`.
    pub fn new(spill_after: usize) -> Self {
        Self::in_dir(std::env::temp_dir(), spill_after)
    }

    pub fn in_dir(dir: std::path::PathBuf, spill_after: usize) -> Self {
        SpillSink {
            memory: Vec::new(),
            file: None,
            len: 0,
            spill_after,
            dir,
        }
    }

    /// The bytes written, wherever they are.
    pub fn finish(self) -> io::Result<FileData> {
        match self.file {
            None => Ok(FileData::Memory(Bytes::from(self.memory))),
            Some(file) => {
                let file = file.into_inner().map_err(|e| e.into_error())?;
                Ok(FileData::Disk {
                    file: Arc::new(file),
                    len: self.len,
                })
            }
        }
    }
}

impl Write for SpillSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.file.is_none() && self.memory.len() + buf.len() > self.spill_after {
            match tempfile::tempfile_in(&self.dir) {
                Ok(file) => {
                    let mut file = BufWriter::with_capacity(1 << 20, file);
                    file.write_all(&self.memory)?;
                    self.memory = Vec::new();
                    self.file = Some(file);
                }
                // No writable temporary directory (a read-only root file system, say): the file stays in
                // memory, as files did before they spilled, rather than failing every commit.
                Err(e) => {
                    tracing::warn!(
                        "cannot create a temporary file in {} ({e}); keeping this Parquet file in memory \
                         (set TMPDIR to a writable directory)",
                        self.dir.display()
                    );
                    self.spill_after = usize::MAX;
                }
            }
        }
        match &mut self.file {
            Some(file) => file.write_all(buf)?,
            None => self.memory.extend_from_slice(buf),
        }
        self.len += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.file {
            Some(file) => file.flush(),
            None => Ok(()),
        }
    }
}

/// A finished file's bytes.
#[derive(Debug, Clone)]
pub enum FileData {
    Memory(Bytes),
    /// In an unnamed temporary file (shared, so an upload can be retried from the start).
    Disk {
        file: Arc<File>,
        len: u64,
    },
}

impl FileData {
    pub fn len(&self) -> u64 {
        match self {
            FileData::Memory(bytes) => bytes.len() as u64,
            FileData::Disk { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The whole file in memory (for reading it back; uploads stream).
    pub fn to_bytes(&self) -> io::Result<Bytes> {
        match self {
            FileData::Memory(bytes) => Ok(bytes.clone()),
            FileData::Disk { file, len } => read_at(file, 0, *len).map(Bytes::from),
        }
    }

    /// Puts the file at `location`: in one request from memory, in parts from disk. Either way the object
    /// appears whole or not at all; a failed multipart upload is aborted. A spilled file that cannot be read
    /// back fails with a [`SpillReadError`] in its chain.
    pub async fn upload(
        &self,
        store: &dyn object_store::ObjectStore,
        location: &Path,
    ) -> Result<()> {
        let (file, len) = match self {
            FileData::Memory(bytes) => {
                store.put(location, bytes.clone().into()).await?;
                return Ok(());
            }
            FileData::Disk { file, len } => (file.clone(), *len),
        };
        let mut upload = store.put_multipart(location).await?;
        let parts = async {
            let mut offset = 0;
            while offset < len {
                let size = PART.min(len - offset);
                let file = file.clone();
                let part = tokio::task::spawn_blocking(move || read_at(&file, offset, size))
                    .await?
                    .map_err(SpillReadError)?;
                upload.put_part(Bytes::from(part).into()).await?;
                offset += size;
            }
            upload.complete().await?;
            anyhow::Ok(())
        }
        .await;
        if parts.is_err() {
            let _ = upload.abort().await;
        }
        parts
    }
}

/// A spilled file could not be read back from local disk: no retry of the upload can fix that (see
/// [`FileData::upload`] and the lake's `retry_upload`).
#[derive(Debug, thiserror::Error)]
#[error(
    "reading a spilled Parquet file back from the temporary directory failed: {0} (check the disk under TMPDIR)"
)]
pub struct SpillReadError(#[source] pub io::Error);

/// `len` bytes of `file` from `offset`, without moving a cursor the file's clones share (each retry of an
/// upload starts from its own offset 0).
fn read_at(file: &File, offset: u64, len: u64) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let mut out = vec![0; len as usize];
    file.read_exact_at(&mut out, offset)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use object_store::memory::InMemory;

    use super::*;

    fn written(sink_after: usize, chunks: &[&[u8]]) -> FileData {
        let mut sink = SpillSink::new(sink_after);
        for c in chunks {
            sink.write_all(c).unwrap();
        }
        sink.finish().unwrap()
    }

    #[test]
    fn small_files_stay_in_memory_large_ones_spill_whole() {
        let small = written(10, &[b"abc", b"defg"]);
        assert!(matches!(small, FileData::Memory(_)));
        assert_eq!(small.to_bytes().unwrap(), Bytes::from_static(b"abcdefg"));

        let large = written(10, &[b"abcdef", b"ghijkl", b"mn"]);
        assert!(matches!(large, FileData::Disk { len: 14, .. }));
        assert_eq!(
            large.to_bytes().unwrap(),
            Bytes::from_static(b"abcdefghijklmn")
        );
    }

    /// Without a writable temporary directory the file stays in memory, whole.
    #[test]
    fn no_temporary_directory_keeps_the_file_in_memory() {
        let mut sink = SpillSink::in_dir("/nonexistent/weir-spill".into(), 4);
        sink.write_all(b"abcdef").unwrap();
        sink.write_all(b"ghij").unwrap();
        let file = sink.finish().unwrap();
        assert!(matches!(file, FileData::Memory(_)));
        assert_eq!(file.to_bytes().unwrap(), Bytes::from_static(b"abcdefghij"));
    }

    /// A spilled file that cannot be read back fails as a `SpillReadError`, which the lake's upload gives up
    /// on at once (it retries a failing store for as long as it takes).
    #[tokio::test]
    async fn unreadable_spilled_files_fail_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("write-only");
        // Opened for writing only, the file cannot be read: as good as a disk that fails.
        let file = File::create(&path).unwrap();
        let data = FileData::Disk {
            file: Arc::new(file),
            len: 10,
        };
        let store = InMemory::new();
        let location = Path::from("t/part.parquet");
        let error = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            crate::lake::retry_upload(&store, &location, &data),
        )
        .await
        .expect("no retries")
        .unwrap_err();
        assert!(error.chain().any(|e| e.is::<SpillReadError>()), "{error:#}");
        assert!(store.head(&location).await.is_err());
    }

    #[tokio::test]
    async fn spilled_files_upload_in_parts_to_the_same_bytes() {
        // Three parts and a short tail.
        let data: Vec<u8> = (0..(3 * PART + 12_345)).map(|i| (i % 251) as u8).collect();
        let file = written(1 << 20, &[&data]);
        assert!(matches!(file, FileData::Disk { .. }));
        let store = InMemory::new();
        let location = Path::from("t/dt=2026-11-27/part.parquet");
        file.upload(&store, &location).await.unwrap();
        // Retried uploads start over from the same bytes.
        file.upload(&store, &location).await.unwrap();
        let back = store.get(&location).await.unwrap().bytes().await.unwrap();
        assert_eq!(back.len(), data.len());
        assert!(back == data);
    }
}
