//! A store that answers late: `WEIR_LAKE_LATENCY_MS` puts a fixed wait before every request to the lake, as
//! with a store far away (an S3 region across the sea). For benchmarks: a local disk answers at once and
//! hides what waiting on the store costs the pipeline. (object_store's `ThrottledStore` does the same, but
//! cannot read from a local disk.)

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, UploadPart,
};

/// The wait `WEIR_LAKE_LATENCY_MS` asks for, if any.
pub fn from_env() -> Result<Option<Duration>> {
    let Ok(ms) = std::env::var("WEIR_LAKE_LATENCY_MS") else {
        return Ok(None);
    };
    let ms: u64 = ms
        .trim()
        .parse()
        .with_context(|| format!("WEIR_LAKE_LATENCY_MS={ms:?}: not a number of milliseconds"))?;
    Ok((ms > 0).then(|| Duration::from_millis(ms)))
}

/// `inner`, with `wait` before each request (each part of a multipart upload, each deleted object, each
/// listing).
#[derive(Debug)]
pub struct Late {
    inner: Arc<dyn ObjectStore>,
    wait: Duration,
}

impl Late {
    pub fn new(inner: Arc<dyn ObjectStore>, wait: Duration) -> Self {
        Late { inner, wait }
    }
}

impl fmt::Display for Late {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({:?} away)", self.inner, self.wait)
    }
}

#[async_trait]
impl ObjectStore for Late {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        tokio::time::sleep(self.wait).await;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        tokio::time::sleep(self.wait).await;
        let upload = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(LateUpload {
            upload,
            wait: self.wait,
        }))
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        tokio::time::sleep(self.wait).await;
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        tokio::time::sleep(self.wait).await;
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let wait = self.wait;
        let locations = locations
            .then(move |l| async move {
                tokio::time::sleep(wait).await;
                l
            })
            .boxed();
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        after(self.wait, self.inner.list(prefix))
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        after(self.wait, self.inner.list_with_offset(prefix, offset))
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        tokio::time::sleep(self.wait).await;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        tokio::time::sleep(self.wait).await;
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        tokio::time::sleep(self.wait).await;
        self.inner.rename_opts(from, to, options).await
    }
}

/// `listing`, starting after `wait`.
fn after<T: Send + 'static>(
    wait: Duration,
    listing: BoxStream<'static, T>,
) -> BoxStream<'static, T> {
    futures::stream::once(async move {
        tokio::time::sleep(wait).await;
        listing
    })
    .flatten()
    .boxed()
}

#[derive(Debug)]
struct LateUpload {
    upload: Box<dyn MultipartUpload>,
    wait: Duration,
}

#[async_trait]
impl MultipartUpload for LateUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let (wait, put) = (self.wait, self.upload.put_part(data));
        Box::pin(async move {
            tokio::time::sleep(wait).await;
            put.await
        })
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        tokio::time::sleep(self.wait).await;
        self.upload.complete().await
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.upload.abort().await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use futures::TryStreamExt;
    use object_store::ObjectStoreExt;

    use super::*;

    /// Every kind of request waits, and answers as the store behind would, local disk included (whose reads
    /// object_store's `ThrottledStore` cannot pass on).
    #[tokio::test]
    async fn every_request_waits_and_then_answers() {
        let dir = tempfile::tempdir().unwrap();
        let disk = object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap();
        let wait = Duration::from_millis(30);
        let store = Late::new(Arc::new(disk), wait);
        let (a, b) = (Path::from("t/a.bin"), Path::from("t/b.bin"));
        let timed = Instant::now();
        store
            .put(&a, Bytes::from_static(b"rows").into())
            .await
            .unwrap();
        let read = store.get(&a).await.unwrap().bytes().await.unwrap();
        assert_eq!(read, Bytes::from_static(b"rows"));
        store.rename(&a, &b).await.unwrap();
        let listed: Vec<ObjectMeta> = store
            .list(Some(&Path::from("t")))
            .try_collect()
            .await
            .unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].location, b);
        store.delete(&b).await.unwrap();
        assert!(timed.elapsed() >= wait * 5, "{:?}", timed.elapsed());
    }
}
