//! Pausing and resuming the pipeline on every host that shares its stream (`bus::pause` keeps the word):
//!
//! - [`ask`]: a pause or resume asked of this host applies here at once, then goes in the cluster's record;
//!   one NATS does not take is put by [`follow`] as soon as NATS does, unless a newer word came meanwhile.
//! - [`at_start`]: a host starting while the pipeline is paused starts paused, before it takes an event; one
//!   that cannot read the record starts paused too, until it can.
//! - [`follow`]: every host watches the record and pauses or resumes as it changes.
//!
//! A paused host processes what it had already taken (at most the handover queue's batches), then closes its
//! pull and holds what it had pulled and its client had prefetched, extending their ack deadline, and takes
//! nothing more (`runner::fetch`). Nothing is lost, written twice or delivered again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;

use super::shared::Shared;
use crate::bus::pause::{ClusterPause, PauseRecord};

/// How long a read or a put of the record may wait for NATS.
const NATS_TIMEOUT: Duration = Duration::from_secs(5);

/// How often the follower tries again when NATS does not answer.
const RETRY: Duration = Duration::from_secs(5);

/// Which hosts a pause or resume asked of this one reaches.
#[derive(Clone)]
pub enum Scope {
    /// This host alone, which is the whole pipeline (a replay, which runs on a stream of its own).
    Alone,
    /// Every host sharing the stream, through the cluster's record.
    Cluster(Arc<Pausing>),
    /// Every host should, but the cluster's record could not be opened at start.
    Unshared,
}

/// This host's side of the cluster's record.
pub struct Pausing {
    cluster: ClusterPause,
    host: String,
    /// The newest revision this host put: an older record reaching [`follow`] is passed over, since it would
    /// undo (for a moment, or for good) the word given here since.
    own: AtomicU64,
    /// A word given here that NATS has not taken yet (being put, or left for [`follow`] to put): the
    /// records [`follow`] sees meanwhile are passed over.
    unsent: Mutex<Option<PauseRecord>>,
    /// Taken for each put of this host's, so that two never cross (an older word landing last).
    puts: tokio::sync::Mutex<()>,
    wake: tokio::sync::Notify,
}

impl Pausing {
    pub fn new(cluster: ClusterPause, host: String) -> Arc<Pausing> {
        Arc::new(Pausing {
            cluster,
            host,
            own: AtomicU64::new(0),
            unsent: Mutex::new(None),
            puts: tokio::sync::Mutex::new(()),
            wake: tokio::sync::Notify::new(),
        })
    }

    fn unsent(&self) -> std::sync::MutexGuard<'_, Option<PauseRecord>> {
        self.unsent.lock().expect("not poisoned")
    }
}

/// How far a word asked of this host went.
#[derive(Debug, PartialEq)]
pub enum Reach {
    /// Every host of the pipeline follows it.
    All,
    /// This host, the whole pipeline (a replay).
    Alone,
    /// This host now; the others once NATS takes it, which this host sees to.
    ThisHostForNow(String),
}

/// Pauses (or resumes) this host now, then tells the others. An error says they never will (this host is
/// paused, or resumed, all the same).
pub async fn ask(shared: &Shared, scope: &Scope, paused: bool) -> Result<Reach, String> {
    let what = if paused { "paused" } else { "resumed" };
    let pausing = match scope {
        Scope::Alone => {
            shared.health.paused.store(paused, Ordering::Relaxed);
            return Ok(Reach::Alone);
        }
        Scope::Unshared => {
            shared.health.paused.store(paused, Ordering::Relaxed);
            return Err(format!(
                "{what} on this host only: it could not open the pipeline's record of pauses at start, so \
                 the other hosts do not hear of it; restart this host once NATS grants it JetStream \
                 key-value access, or ask each host"
            ));
        }
        Scope::Cluster(pausing) => pausing,
    };
    let _turn = pausing.puts.lock().await;
    shared.health.paused.store(paused, Ordering::Relaxed);
    let record = PauseRecord {
        paused,
        host: pausing.host.clone(),
        at_ms: chrono::Utc::now().timestamp_millis(),
    };
    // In flight: the records the follower sees meanwhile are older, and passed over. An older word of this
    // host still waiting to go out is outdone.
    *pausing.unsent() = Some(record.clone());
    let why = match within(pausing.cluster.set(&record)).await {
        Ok(revision) => {
            pausing.own.fetch_max(revision, Ordering::Relaxed);
            pausing.unsent().take_if(|w| *w == record);
            tracing::info!("pipeline {what} on every host, as asked of this one");
            return Ok(Reach::All);
        }
        Err(e) => format!("{e:#}"),
    };
    pausing.wake.notify_one();
    tracing::warn!(
        "pipeline {what} on this host; the other hosts hear of it once NATS takes it: {why}"
    );
    Ok(Reach::ThisHostForNow(format!(
        "{what} on this host; NATS did not take the word for the other hosts ({why}): this host puts it as \
         soon as NATS does, unless another host is asked to pause or resume first"
    )))
}

/// Pauses this host if the pipeline is paused, or if that cannot be told; the revision of the record seen
/// (`Some(0)`: there is none; `None`: it could not be read, and [`follow`] reads it once it can).
pub async fn at_start(pausing: &Pausing, shared: &Shared) -> Option<u64> {
    let why = match tokio::time::timeout(NATS_TIMEOUT, pausing.cluster.current()).await {
        Ok(Ok(Some((revision, record)))) => {
            if record.paused {
                shared.health.paused.store(true, Ordering::Relaxed);
                tracing::warn!(
                    by = %record.host,
                    at = %at(record.at_ms),
                    "the pipeline is paused: this host takes no events until it is resumed \
                     (POST /api/v1/pipeline/resume on any of its hosts)"
                );
            }
            return Some(revision);
        }
        Ok(Ok(None)) => return Some(0),
        Ok(Err(e)) => format!("{e:#}"),
        Err(_) => format!("NATS did not answer within {NATS_TIMEOUT:?}"),
    };
    shared.health.paused.store(true, Ordering::Relaxed);
    tracing::warn!(
        "cannot tell whether the pipeline is paused ({why}): this host takes no events until it can"
    );
    None
}

/// Pauses and resumes this host as the cluster's record changes after revision `seen` (`None`: read it
/// first), and puts the words NATS did not take when they were asked, until `stop`.
pub async fn follow(
    pausing: Arc<Pausing>,
    shared: Arc<Shared>,
    mut seen: Option<u64>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let next = match catch_up(&pausing, &shared, seen).await {
            Ok(revision) => {
                seen = Some(revision);
                watch(&pausing, &shared, &mut seen, &mut stop).await
            }
            Err(e) => {
                tracing::warn!(
                    "pauses and resumes do not pass between this host and the others for now: {e:#}"
                );
                Next::Retry
            }
        };
        match next {
            Next::Stop => return,
            Next::Woken => continue,
            Next::Retry => tokio::select! {
                _ = stop.changed() => return,
                _ = pausing.wake.notified() => {}
                _ = tokio::time::sleep(RETRY) => {}
            },
        }
    }
}

/// Why [`watch`] returned.
enum Next {
    Stop,
    /// A word NATS did not take is waiting to be put.
    Woken,
    /// The watch failed or ended: watched again after a while.
    Retry,
}

/// Applies each record after `seen` as it comes.
async fn watch(
    pausing: &Pausing,
    shared: &Shared,
    seen: &mut Option<u64>,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> Next {
    let records = match pausing.cluster.watch_after(seen.unwrap_or(0)).await {
        Ok(records) => records,
        Err(e) => {
            tracing::warn!(
                "pauses and resumes asked of other hosts do not reach this one for now: {e:#}"
            );
            return Next::Retry;
        }
    };
    let mut records = std::pin::pin!(records);
    loop {
        let next = tokio::select! {
            _ = stop.changed() => return Next::Stop,
            _ = pausing.wake.notified() => return Next::Woken,
            next = records.next() => next,
        };
        match next {
            Some(Ok((revision, record))) => {
                *seen = Some(revision);
                // A word given here since (put, or waiting to be) stands over an older one.
                let outdone =
                    revision < pausing.own.load(Ordering::Relaxed) || pausing.unsent().is_some();
                if !outdone {
                    apply(shared, &record);
                }
            }
            Some(Err(e)) => {
                tracing::warn!("{e:#}; watching again");
                return Next::Retry;
            }
            None => return Next::Retry,
        }
    }
}

/// Puts the word NATS did not take, unless a newer one came meanwhile, and reads the record if it is not
/// known yet; the revision the watch goes on from.
async fn catch_up(pausing: &Pausing, shared: &Shared, seen: Option<u64>) -> anyhow::Result<u64> {
    let _turn = pausing.puts.lock().await;
    let unsent = pausing.unsent().clone();
    if let (Some(seen), None) = (seen, &unsent) {
        return Ok(seen);
    }
    loop {
        let current = within(pausing.cluster.current()).await?;
        let Some(word) = &unsent else {
            // Not known since the start: the record, or, when there is none, not paused.
            let (revision, paused) = current.map_or((0, false), |(r, record)| (r, record.paused));
            if shared.health.paused.swap(paused, Ordering::Relaxed) != paused || paused {
                let what = if paused { "paused" } else { "not paused" };
                tracing::info!("the pipeline is {what}: this host follows");
            }
            return Ok(revision);
        };
        if let Some((revision, record)) = &current
            && record.at_ms > word.at_ms
        {
            // Another host was asked after this one: its word stands.
            pausing.unsent().take_if(|w| w == word);
            apply(shared, record);
            return Ok(*revision);
        }
        // Put only over the record just read: one put meanwhile is read and judged again.
        let last = current.as_ref().map(|(revision, _)| *revision);
        if let Some(revision) = within(pausing.cluster.set_if_still(word, last)).await? {
            pausing.own.fetch_max(revision, Ordering::Relaxed);
            pausing.unsent().take_if(|w| w == word);
            apply(shared, word);
            tracing::info!(
                paused = word.paused,
                "the other hosts now hear of the word asked of this host"
            );
            return Ok(revision);
        }
    }
}

async fn within<T>(
    call: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::time::timeout(NATS_TIMEOUT, call)
        .await
        .map_err(|_| anyhow::anyhow!("NATS did not answer within {NATS_TIMEOUT:?}"))?
}

fn apply(shared: &Shared, record: &PauseRecord) {
    if shared.health.paused.swap(record.paused, Ordering::Relaxed) != record.paused {
        let what = if record.paused { "paused" } else { "resumed" };
        tracing::info!(by = %record.host, at = %at(record.at_ms), "pipeline {what}, as asked of a host");
    }
}

fn at(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(|| ms.to_string(), |t| t.to_rfc3339())
}
