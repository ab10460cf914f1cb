//! The object store a lake lives in, from a URL: `file://` (or a plain path; the default is `./lake`), `s3://`
//! (AWS and S3-compatible stores: MinIO, SeaweedFS, R2), `gs://`, `az://` (or `abfs://`), `memory://`.
//! Credentials come from the usual environment variables and files of each cloud (`AWS_ACCESS_KEY_ID`, the
//! profile `AWS_PROFILE` names in `~/.aws/credentials` and `~/.aws/config` (see `aws_profile`), web identity,
//! instance metadata; `GOOGLE_APPLICATION_CREDENTIALS`; `AZURE_STORAGE_ACCOUNT_KEY`, ...).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use object_store::path::Path;
use object_store::{ObjectStore, RetryConfig};

/// Where the lake is, and how to reach it (from `[lake]`, see `LakeConfig`).
#[derive(Clone, Debug, PartialEq)]
pub struct StoreConfig {
    /// `file:///data/lake`, `./lake`, `s3://bucket/prefix`, `gs://bucket/prefix`, `az://container/prefix`,
    /// `memory://`.
    pub url: String,
    /// S3-compatible stores: the endpoint (`http://127.0.0.1:8333`); AWS when absent.
    pub endpoint: Option<String>,
    /// S3: the region (default `us-east-1`, which most S3-compatible stores accept).
    pub region: Option<String>,
    /// S3: address buckets by path (`endpoint/bucket/key`), as most S3-compatible stores want. Default true
    /// when an endpoint is set.
    pub path_style: Option<bool>,
    /// Allow plain HTTP to the endpoint (local test stores).
    pub allow_http: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            url: "./lake".into(),
            endpoint: None,
            region: None,
            path_style: None,
            allow_http: false,
        }
    }
}

/// A lake's store: the object store and the prefix every key lives under.
#[derive(Clone, Debug)]
pub struct Store {
    pub store: Arc<dyn ObjectStore>,
    pub prefix: Path,
    pub url: String,
}

impl Store {
    /// Deletes an object; one already gone is no error (deletes are redone after crashes).
    pub async fn delete_if_present(&self, location: &Path) -> object_store::Result<()> {
        match object_store::ObjectStoreExt::delete(&self.store, location).await {
            Err(object_store::Error::NotFound { .. }) => Ok(()),
            other => other,
        }
    }

    /// Opens the store. Nothing is contacted yet: an unreachable store shows up at the first read or write.
    pub fn open(config: &StoreConfig) -> Result<Self> {
        crate::tls::install_default_provider();
        let url = config.url.trim();
        check_url(url).map_err(anyhow::Error::msg)?;
        // Requests are retried briefly here; the lake's commit loop retries for as long as it takes.
        let retry = RetryConfig {
            max_retries: 3,
            retry_timeout: Duration::from_secs(30),
            ..RetryConfig::default()
        };
        let (store, prefix): (Arc<dyn ObjectStore>, String) = match url.split_once("://") {
            None | Some(("file", _)) => {
                let path = url.strip_prefix("file://").unwrap_or(url);
                std::fs::create_dir_all(path)
                    .with_context(|| format!("cannot create the lake directory {path}"))?;
                // fsync every file and directory entry before a write returns, as a remote store's answer
                // implies: messages are acked once their commit returns, so a power cut must not take back
                // a file or a commit record the acks counted on.
                let store = object_store::local::LocalFileSystem::new_with_prefix(path)
                    .with_context(|| format!("cannot open the lake directory {path}"))?
                    .with_fsync(true);
                (Arc::new(store), String::new())
            }
            Some(("memory", _)) => (
                Arc::new(object_store::memory::InMemory::new()),
                String::new(),
            ),
            Some(("s3" | "s3a", rest)) => {
                let (bucket, prefix) = split_bucket(rest);
                let profile = super::aws_profile::from_env();
                let mut builder = object_store::aws::AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_retry(retry)
                    .with_region(
                        config
                            .region
                            .clone()
                            .or_else(|| std::env::var("AWS_REGION").ok())
                            .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
                            .or(profile.region)
                            .unwrap_or_else(|| "us-east-1".into()),
                    )
                    .with_allow_http(config.allow_http);
                // The environment's keys win; else the profile's, if it has some. Given as a provider of
                // their own: a session token left in the environment belongs to other keys.
                if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
                    match (profile.access_key_id, profile.secret_access_key) {
                        (Some(key_id), Some(secret_key)) => {
                            let keys = object_store::aws::AwsCredential {
                                key_id,
                                secret_key,
                                token: profile.session_token,
                            };
                            builder = builder.with_credentials(Arc::new(
                                object_store::StaticCredentialProvider::new(keys),
                            ));
                        }
                        _ => {
                            if let Some(source) = profile.other_source {
                                tracing::warn!(
                                    "the AWS profile gets its keys by `{source}`, which Weir does not follow: \
                                     export them (`aws configure export-credentials --format env`) or use a \
                                     profile with keys"
                                );
                            }
                        }
                    }
                }
                if let Some(endpoint) = &config.endpoint {
                    builder = builder
                        .with_endpoint(endpoint)
                        .with_virtual_hosted_style_request(!config.path_style.unwrap_or(true));
                } else if let Some(path_style) = config.path_style {
                    builder = builder.with_virtual_hosted_style_request(!path_style);
                }
                (
                    Arc::new(
                        builder
                            .build()
                            .with_context(|| format!("cannot open {url}"))?,
                    ),
                    prefix,
                )
            }
            Some(("gs", rest)) => {
                let (bucket, prefix) = split_bucket(rest);
                let store = object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_bucket_name(bucket)
                    .with_retry(retry)
                    .build()
                    .with_context(|| format!("cannot open {url}"))?;
                (Arc::new(store), prefix)
            }
            Some(("az" | "azure" | "abfs" | "abfss", rest)) => {
                let (container, prefix) = split_bucket(rest);
                let store = object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_container_name(container)
                    .with_retry(retry)
                    .build()
                    .with_context(|| format!("cannot open {url}"))?;
                (Arc::new(store), prefix)
            }
            Some((scheme, _)) => bail!("lake url {url:?}: scheme {scheme:?} is not supported"),
        };
        let store: Arc<dyn ObjectStore> = match super::latency::from_env()? {
            Some(wait) => Arc::new(super::latency::Late::new(store, wait)),
            None => store,
        };
        Ok(Store {
            store,
            prefix: Path::from(prefix),
            url: url.to_string(),
        })
    }

    /// The full key of a path inside the lake.
    pub fn path(&self, relative: &str) -> Path {
        let mut parts: Vec<String> = self
            .prefix
            .parts()
            .map(|p| p.as_ref().to_string())
            .collect();
        parts.extend(
            relative
                .split('/')
                .filter(|p| !p.is_empty())
                .map(str::to_string),
        );
        Path::from_iter(parts)
    }

    /// A key relative to the lake (the inverse of [`Store::path`]).
    pub fn relative(&self, path: &Path) -> String {
        let parts: Vec<String> = path.parts().map(|p| p.as_ref().to_string()).collect();
        let skip = self.prefix.parts().count();
        parts[skip.min(parts.len())..].join("/")
    }
}

/// Whether `url` names a lake [`Store::open`] can open: a local path, or a URL of a known scheme with a
/// bucket or container. A URL that lost a slash (`s3:/bucket`) would otherwise be taken for a local directory
/// named `s3:`, and the lake would land on local disk unnoticed.
pub fn check_url(url: &str) -> Result<(), String> {
    const SCHEMES: &str = "use a local path, file://, s3://, gs://, az:// or memory://";
    // The schemes `Store::open` takes, those with a bucket or container after them first.
    const BUCKETED: [&str; 7] = ["s3", "s3a", "gs", "az", "azure", "abfs", "abfss"];
    const BARE: [&str; 2] = ["file", "memory"];
    let url = url.trim();
    if url.is_empty() {
        return Err(format!("the lake url is empty: {SCHEMES}"));
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        // Only the names of schemes: `lake:v2` may be a directory.
        let scheme = url.split_once(':').map(|(s, _)| s).filter(|s| {
            let s = s.to_ascii_lowercase();
            BUCKETED
                .iter()
                .chain(&BARE)
                .chain(&["http", "https"])
                .any(|k| *k == s)
        });
        return match scheme {
            Some(scheme) => Err(format!(
                "lake url {url:?} lacks the `//` of {scheme}://: write {scheme}://..., or ./{url} for a local \
                 directory of that name"
            )),
            None => Ok(()),
        };
    };
    if BARE.contains(&scheme) {
        Ok(())
    } else if !BUCKETED.contains(&scheme) {
        Err(format!(
            "lake url {url:?}: unknown scheme {scheme:?} ({SCHEMES})"
        ))
    } else if split_bucket(rest).0.is_empty() {
        Err(format!(
            "lake url {url:?} names no bucket or container: {scheme}://<bucket>/<prefix>"
        ))
    } else {
        Ok(())
    }
}

/// `bucket/some/prefix` → (`bucket`, `some/prefix`).
fn split_bucket(rest: &str) -> (&str, String) {
    let rest = rest.trim_end_matches('/');
    match rest.split_once('/') {
        Some((bucket, prefix)) => (bucket, prefix.to_string()),
        None => (rest, String::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lake_urls_that_would_go_astray_are_refused() {
        for ok in [
            "./lake",
            "/data/lake",
            "lake",
            "file:///data/lake",
            "memory://",
            "s3://bucket",
            "s3://bucket/prefix/",
            "gs://bucket/p",
            "az://container/p",
            "lake:v2",
            "backup-2026-01-01T10:00",
        ] {
            assert_eq!(check_url(ok), Ok(()), "{ok}");
        }
        for (bad, says) in [
            ("s3:/bucket/lake", "lacks the `//` of s3://"),
            ("gs:bucket", "lacks the `//` of gs://"),
            ("https:/host/lake", "lacks the `//` of https://"),
            ("ftp://host/lake", "unknown scheme \"ftp\""),
            ("s3://", "names no bucket"),
            ("az:///prefix", "names no bucket"),
            ("", "empty"),
        ] {
            let err = check_url(bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
            assert!(
                Store::open(&StoreConfig {
                    url: bad.into(),
                    ..StoreConfig::default()
                })
                .is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn paths_live_under_the_prefix() {
        let store = Store::open(&StoreConfig {
            url: "memory://".into(),
            ..StoreConfig::default()
        })
        .unwrap();
        assert_eq!(
            store.path("silver/dt=2026-01-01/a.parquet").as_ref(),
            "silver/dt=2026-01-01/a.parquet"
        );
        assert_eq!(split_bucket("b/x/y/"), ("b", "x/y".to_string()));
        let err = Store::open(&StoreConfig {
            url: "ftp://x".into(),
            ..StoreConfig::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("unknown scheme"), "{err}");
    }
}
