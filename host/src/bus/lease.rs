//! The lease of an exclusive reader (`consumer.mode = "exclusive"`): at most one host reads a pipeline's
//! stream alone. A key in a NATS key-value bucket whose entries expire after [`TTL`]: the holder writes it
//! again every third of that (a compare-and-set on its last revision), so a holder that dies loses it within
//! [`TTL`], and a clean stop deletes it at once.
//!
//! The commit log already refuses a second reader's epochs over the same sequences; the lease stops that
//! second reader before it writes anything, which matters most when both run under the same host name (their
//! staged files would share paths). A holder that cannot renew for nearly [`TTL`] counts its lease as lost
//! (another host may take it after [`TTL`]) and commits nothing more; a commit already under way writes its
//! record only while the last renewal is that recent ([`Fence`]).

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

/// A lease entry's holder, as an operator is told of it.
fn describe(value: &[u8]) -> String {
    serde_json::from_slice::<Holder>(value)
        .map_or_else(|_| "an unknown holder".to_string(), |h| h.to_string())
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
    /// Whether it is lost, and when it was last renewed.
    fence: Fence,
}

/// What a commit checks just before its record, the one step that makes an epoch count: that the lease is
/// surely still this host's, renewed within [`VALID_FOR`]. The keeper's own verdict ([`Keeper::lost`]) comes
/// only once it gives up, up to a renewal's timeout later, by when another host may hold the lease.
#[derive(Clone)]
pub struct Fence {
    /// Set once the keeper gives the lease up.
    lost: Arc<AtomicBool>,
    renewed_at: Arc<std::sync::Mutex<Instant>>,
}

impl Fence {
    pub fn holds(&self) -> bool {
        self.time_left().is_some()
    }

    /// How much longer the lease is surely this host's; `None` when it may not be.
    pub fn time_left(&self) -> Option<Duration> {
        if self.lost.load(Ordering::SeqCst) {
            return None;
        }
        VALID_FOR
            .checked_sub(self.since_renewal())
            .filter(|left| !left.is_zero())
    }

    fn since_renewal(&self) -> Duration {
        self.renewed_at.lock().expect("not poisoned").elapsed()
    }
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

/// The leases' bucket, created on `replicas` servers as the stream is: on one, every exclusive reader would
/// stop while that server is down, and none could take over.
async fn bucket(js: &jetstream::Context, replicas: usize) -> Result<kv::Store> {
    match js.get_key_value(BUCKET).await {
        Ok(kv) => Ok(kv),
        Err(_) => js
            .create_key_value(kv::Config {
                bucket: BUCKET.into(),
                description: "Which host reads each Weir pipeline's stream alone".into(),
                history: 1,
                max_age: TTL,
                num_replicas: replicas.max(1),
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
        replicas: usize,
    ) -> Result<Lease> {
        let kv = bucket(js, replicas).await?;
        let key = super::kv_key(pipeline);
        let me = Holder::me(host);
        let value = Bytes::from(serde_json::to_vec(&me).expect("a holder serializes"));
        let deadline = tokio::time::Instant::now() + wait;
        let mut told = false;
        loop {
            let sent = Instant::now();
            match kv.create(&key, value.clone()).await {
                Ok(revision) => return Ok(Lease::new(kv, key, value, revision, sent)),
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
                let sent = Instant::now();
                match kv.update(&key, value.clone(), entry.revision).await {
                    Ok(revision) => {
                        tracing::info!(
                            "took over the exclusive lease of an earlier run of this host that did not \
                             let it go"
                        );
                        return Ok(Lease::new(kv, key, value, revision, sent));
                    }
                    Err(_) => continue, // someone else was quicker: look again
                }
            }
            let who = describe(&entry.value);
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

    fn new(kv: kv::Store, key: String, value: Bytes, revision: u64, sent: Instant) -> Lease {
        Lease {
            kv,
            key,
            value,
            revision,
            fence: Fence {
                lost: Arc::new(AtomicBool::new(false)),
                renewed_at: Arc::new(std::sync::Mutex::new(sent)),
            },
        }
    }

    /// Notes a renewal (or a take-over of its own lease) by a write sent at `sent`. The server counts the
    /// lease's time from when it stored the write, which is after `sent` but maybe well before its answer
    /// came: counted from the answer, the fence could outlast the lease.
    fn renewed(&mut self, revision: u64, sent: Instant) {
        self.revision = revision;
        *self.fence.renewed_at.lock().expect("not poisoned") = sent;
    }

    /// Keeps the lease in a task of its own until [`Keeper::finish`], or until it is lost: taken by
    /// another host, or not renewed for nearly [`TTL`] (the server unreachable). A failed renewal is
    /// retried meanwhile.
    pub fn keep(mut self) -> Keeper {
        let fence = self.fence.clone();
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(TTL / 3);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.changed() => return Ok(self),
                }
                let error = match self.renew().await {
                    Ok(()) => continue,
                    Err(Renewal::Unreachable(e)) if self.fence.since_renewal() < VALID_FOR => {
                        tracing::warn!("cannot renew the exclusive lease (retrying): {e:#}");
                        continue;
                    }
                    Err(Renewal::Unreachable(e)) => anyhow::anyhow!(
                        "the exclusive lease could not be renewed for {}s ({e:#}): another host may \
                         hold it now; stopping without committing",
                        self.fence.since_renewal().as_secs()
                    ),
                    Err(Renewal::Lost(who)) => anyhow::anyhow!(
                        "the exclusive lease was taken over by {who}; stopping without committing"
                    ),
                };
                // Said before the fence falls: a commit it refuses is then logged after the reason.
                tracing::error!("{error:#}");
                self.fence.lost.store(true, Ordering::SeqCst);
                return Err(error);
            }
        });
        Keeper {
            task: Some(task),
            ended: None,
            stop,
            fence,
        }
    }

    /// Writes the lease over `revision`, counting the renewal from when the write was sent.
    async fn write(&mut self, revision: u64) -> Result<(), kv::UpdateError> {
        let sent = Instant::now();
        let revision = self
            .kv
            .update(&self.key, self.value.clone(), revision)
            .await?;
        self.renewed(revision, sent);
        Ok(())
    }

    async fn renew(&mut self) -> Result<(), Renewal> {
        match self.write(self.revision).await {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {}
            Err(e) => return Err(Renewal::Unreachable(e.into())),
        }
        // Ours no longer: ran out while the server was away, or taken.
        match self.kv.entry(&self.key).await {
            // Ours after all: a renewal whose answer was lost moved the revision on. When it was stored is
            // not known, so the lease is renewed again from here, timed.
            Ok(Some(entry))
                if entry.operation == kv::Operation::Put && entry.value == self.value =>
            {
                self.revision = entry.revision;
                self.write(entry.revision)
                    .await
                    .map_err(|e| Renewal::Unreachable(e.into()))
            }
            Ok(Some(entry)) if entry.operation == kv::Operation::Put => {
                Err(Renewal::Lost(describe(&entry.value)))
            }
            // Gone (deleted by hand, or ran out though renewed in time): nobody else holds it, take it again.
            Ok(_) => {
                let sent = Instant::now();
                match self.kv.create(&self.key, self.value.clone()).await {
                    Ok(revision) => {
                        self.renewed(revision, sent);
                        Ok(())
                    }
                    Err(e) => Err(Renewal::Unreachable(e.into())),
                }
            }
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

/// A lease being kept (see [`Lease::keep`]).
pub struct Keeper {
    /// Ends with the lease when stopped, with the error when the lease is lost.
    task: Option<tokio::task::JoinHandle<Result<Lease>>>,
    /// What the task ended with, once [`Keeper::ended`] saw it end.
    ended: Option<Result<Lease>>,
    stop: tokio::sync::watch::Sender<bool>,
    fence: Fence,
}

impl Keeper {
    /// Set once the lease is lost: from then on, commit nothing.
    pub fn lost(&self) -> Arc<AtomicBool> {
        self.fence.lost.clone()
    }

    /// What a commit checks before its record.
    pub fn fence(&self) -> Fence {
        self.fence.clone()
    }

    /// Resolves once the lease is lost (it is kept otherwise, until [`Keeper::finish`]).
    pub async fn ended(&mut self) {
        // Awaited in place: dropped unfinished (another branch of a `select!` won), the task stays here.
        match self.task.as_mut() {
            Some(task) => {
                let end = task.await;
                self.task = None;
                self.ended = Some(joined(end));
            }
            None => std::future::pending().await,
        }
    }

    /// Stops keeping the lease and lets go of it, so the next host (or run) takes it at once; or, when it
    /// was lost, says why.
    pub async fn finish(mut self) -> Result<()> {
        let end = match (self.ended.take(), self.task.take()) {
            (Some(end), _) => end,
            (None, Some(task)) => {
                let _ = self.stop.send(true);
                joined(task.await)
            }
            (None, None) => unreachable!("a keeper has its task or what it ended with"),
        };
        end?.release().await;
        Ok(())
    }
}

fn joined(end: Result<Result<Lease>, tokio::task::JoinError>) -> Result<Lease> {
    end.unwrap_or_else(|e| Err(anyhow::anyhow!("the lease task failed: {e}")))
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
        .entry(super::kv_key(pipeline))
        .await
        .context("cannot read the exclusive lease")?;
    Ok(entry
        .filter(|e| e.operation == kv::Operation::Put)
        .map(|e| describe(&e.value)))
}

enum Renewal {
    Unreachable(anyhow::Error),
    Lost(String),
}
