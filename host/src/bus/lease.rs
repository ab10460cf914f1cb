//! The lease of an exclusive reader (`consumer.mode = "exclusive"`): at most one host reads a pipeline's
//! stream alone. A key in a NATS key-value bucket whose entries expire after [`TTL`]: the holder writes it
//! again every third of that (a compare-and-set on its last revision), so a holder that dies loses it within
//! [`TTL`], and a clean stop deletes it at once.
//!
//! The commit log already refuses a second reader's epochs over the same sequences; the lease stops that
//! second reader before it writes anything, which matters most when both run under the same host name (their
//! staged files would share paths). A holder that cannot renew for nearly [`TTL`] counts its lease as lost
//! (another host may take it after [`TTL`]) and commits nothing more.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// The bucket of leases, one key per pipeline.
pub const BUCKET: &str = "weir_leases";

/// How long a lease outlives its holder's last renewal.
pub const TTL: Duration = Duration::from_secs(15);

/// A holder that has not renewed for this long counts its lease as lost: it may run out on the server
/// before the holder hears of it, and another host may take it then.
const VALID_FOR: Duration = Duration::from_secs(TTL.as_secs() - 3);

/// Who holds a lease: enough to tell an operator, and to tell a run of this host killed before it could
/// let go from a live one. A process id says whether a process runs only on the same machine (boot) and in
/// the same process namespace: two containers with one host name (host networking, or `pipeline.host` set
/// alike) are told apart by the namespace.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Holder {
    host: String,
    pid: u32,
    since_ms: i64,
    #[serde(default)]
    boot: String,
    #[serde(default)]
    pid_namespace: String,
}

impl Holder {
    fn me(host: &str) -> Holder {
        Holder {
            host: host.to_string(),
            pid: std::process::id(),
            since_ms: chrono::Utc::now().timestamp_millis(),
            boot: std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .map(|b| b.trim().to_string())
                .unwrap_or_default(),
            pid_namespace: std::fs::read_link("/proc/self/ns/pid")
                .map(|l| l.to_string_lossy().into_owned())
                .unwrap_or_default(),
        }
    }

    /// Whether `self` is an earlier run of `me` that is gone: same host name, machine and namespace, and its
    /// process no longer runs (or it is ours: a process of that id died and ours got the id again).
    fn is_gone_run_of(&self, me: &Holder) -> bool {
        self.host == me.host
            && !me.boot.is_empty()
            && self.boot == me.boot
            && !me.pid_namespace.is_empty()
            && self.pid_namespace == me.pid_namespace
            && (self.pid == me.pid || !running(self.pid))
    }
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let since = chrono::DateTime::from_timestamp_millis(self.since_ms)
            .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_default();
        write!(f, "host {} (pid {}) since {since}", self.host, self.pid)
    }
}

/// A lease held by this process.
pub struct Lease {
    kv: kv::Store,
    key: String,
    value: Bytes,
    revision: u64,
    renewed: Instant,
    /// Set once the lease is lost; whoever commits checks it first.
    lost: Arc<AtomicBool>,
}

/// Letters, digits, `-` and `_` (what a key may hold); anything else becomes `_`.
fn key_for(pipeline: &str) -> String {
    pipeline
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Whether process `pid` of this machine is running.
fn running(pid: u32) -> bool {
    #[cfg(unix)]
    {
        // SAFETY: signal 0 only checks that the process exists and may be signalled; nothing is sent.
        let alive = unsafe { libc::kill(pid as libc::pid_t, 0) } == 0;
        alive || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
    }
}

async fn bucket(js: &jetstream::Context) -> Result<kv::Store> {
    match js.get_key_value(BUCKET).await {
        Ok(kv) => Ok(kv),
        Err(_) => js
            .create_key_value(kv::Config {
                bucket: BUCKET.into(),
                description: "Which host reads each Weir pipeline's stream alone".into(),
                history: 1,
                max_age: TTL,
                ..Default::default()
            })
            .await
            .context("cannot create the key-value bucket for exclusive leases"),
    }
}

impl Lease {
    /// Takes the lease of `pipeline` for `host`. A holder that is an earlier run of this host, no longer
    /// running, is taken over at once; any other is waited for, up to `wait`, in case it is a host that
    /// died and whose lease has yet to run out. Fails, naming the holder, when it is still held then.
    pub async fn acquire(
        js: &jetstream::Context,
        pipeline: &str,
        host: &str,
        wait: Duration,
    ) -> Result<Lease> {
        let kv = bucket(js).await?;
        let key = key_for(pipeline);
        let me = Holder::me(host);
        let value = Bytes::from(serde_json::to_vec(&me).expect("a holder serializes"));
        let deadline = tokio::time::Instant::now() + wait;
        let mut told = false;
        loop {
            match kv.create(&key, value.clone()).await {
                Ok(revision) => return Ok(Lease::new(kv, key, value, revision)),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(e).context(format!("cannot take the lease of pipeline {pipeline}"));
                }
            }
            let Some(entry) = kv
                .entry(&key)
                .await
                .context("cannot read the exclusive lease")?
            else {
                continue; // ran out meanwhile
            };
            if entry.operation != kv::Operation::Put {
                continue; // let go meanwhile: `create` takes a deleted key
            }
            let holder: Option<Holder> = serde_json::from_slice(&entry.value).ok();
            if holder.as_ref().is_some_and(|h| h.is_gone_run_of(&me)) {
                match kv.update(&key, value.clone(), entry.revision).await {
                    Ok(revision) => {
                        tracing::info!(
                            "took over the exclusive lease of an earlier run of this host that did not \
                             let it go"
                        );
                        return Ok(Lease::new(kv, key, value, revision));
                    }
                    Err(_) => continue, // someone else was quicker: look again
                }
            }
            let who = holder.map_or_else(|| "an unknown holder".to_string(), |h| h.to_string());
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "another host reads pipeline {pipeline} alone (consumer.mode = \"exclusive\"): {who}. \
                     Stop it first, or set consumer.mode = \"shared\" on every host to share the stream"
                );
            }
            if !told {
                tracing::warn!(
                    "pipeline {pipeline} is read alone by {who}; waiting up to {}s for its lease to run \
                     out (it does {}s after its holder stops renewing it)",
                    wait.as_secs(),
                    TTL.as_secs()
                );
                told = true;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    fn new(kv: kv::Store, key: String, value: Bytes, revision: u64) -> Lease {
        Lease {
            kv,
            key,
            value,
            revision,
            renewed: Instant::now(),
            lost: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Set once the lease is lost: from then on, commit nothing.
    pub fn lost(&self) -> Arc<AtomicBool> {
        self.lost.clone()
    }

    /// Keeps the lease until `stop` (then hands it back, to [`Lease::release`]) or until it is lost (the
    /// error): taken by another host, or not renewed for nearly [`TTL`] (the server unreachable). A failed
    /// renewal is retried meanwhile.
    pub fn keep(
        mut self,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<(Lease, Result<()>)> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TTL / 3);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.changed() => return (self, Ok(())),
                }
                match self.renew().await {
                    Ok(()) => {}
                    Err(Renewal::Unreachable(e)) if self.renewed.elapsed() < VALID_FOR => {
                        tracing::warn!("cannot renew the exclusive lease (retrying): {e:#}");
                    }
                    Err(Renewal::Unreachable(e)) => {
                        self.lost.store(true, Ordering::SeqCst);
                        let error = anyhow::anyhow!(
                            "the exclusive lease could not be renewed for {}s ({e:#}): another host may \
                             hold it now; stopping without committing",
                            self.renewed.elapsed().as_secs()
                        );
                        tracing::error!("{error:#}");
                        return (self, Err(error));
                    }
                    Err(Renewal::Lost(who)) => {
                        self.lost.store(true, Ordering::SeqCst);
                        let error = anyhow::anyhow!(
                            "the exclusive lease was taken over by {who}; stopping without committing"
                        );
                        tracing::error!("{error:#}");
                        return (self, Err(error));
                    }
                }
            }
        })
    }

    async fn renew(&mut self) -> Result<(), Renewal> {
        match self
            .kv
            .update(&self.key, self.value.clone(), self.revision)
            .await
        {
            Ok(revision) => {
                self.revision = revision;
                self.renewed = Instant::now();
                return Ok(());
            }
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {}
            Err(e) => return Err(Renewal::Unreachable(e.into())),
        }
        // Ours no longer: ran out while the server was away, or taken.
        match self.kv.entry(&self.key).await {
            // Ours after all: a renewal whose answer was lost moved the revision on.
            Ok(Some(entry))
                if entry.operation == kv::Operation::Put && entry.value == self.value =>
            {
                self.revision = entry.revision;
                self.renewed = Instant::now();
                Ok(())
            }
            Ok(Some(entry)) if entry.operation == kv::Operation::Put => {
                let who = serde_json::from_slice::<Holder>(&entry.value)
                    .map_or_else(|_| "an unknown holder".to_string(), |h| h.to_string());
                Err(Renewal::Lost(who))
            }
            // Gone (deleted by hand, or ran out though renewed in time): nobody else holds it, take it again.
            Ok(_) => match self.kv.create(&self.key, self.value.clone()).await {
                Ok(revision) => {
                    self.revision = revision;
                    self.renewed = Instant::now();
                    Ok(())
                }
                Err(e) => Err(Renewal::Unreachable(e.into())),
            },
            Err(e) => Err(Renewal::Unreachable(e.into())),
        }
    }

    /// Lets go, so the next host (or run) takes the lease at once.
    pub async fn release(self) {
        if let Err(e) = self
            .kv
            .delete_expect_revision(&self.key, Some(self.revision))
            .await
        {
            tracing::warn!("cannot let go of the exclusive lease (it runs out by itself): {e}");
        }
    }
}

/// Who holds the lease of `pipeline`, if anyone. A host that would read the stream through the shared
/// consumer checks first: it would read the same messages as the exclusive reader, and under the same host
/// name clean up that reader's staged files.
pub async fn holder(js: &jetstream::Context, pipeline: &str) -> Result<Option<String>> {
    // No bucket: no exclusive reader has ever run against this server.
    let Ok(kv) = js.get_key_value(BUCKET).await else {
        return Ok(None);
    };
    let entry = kv
        .entry(key_for(pipeline))
        .await
        .context("cannot read the exclusive lease")?;
    Ok(entry
        .filter(|e| e.operation == kv::Operation::Put)
        .map(|e| {
            serde_json::from_slice::<Holder>(&e.value)
                .map_or_else(|_| "an unknown holder".to_string(), |h| h.to_string())
        }))
}

enum Renewal {
    Unreachable(anyhow::Error),
    Lost(String),
}
