//! Adopting a departed host's windows. Hosts that share a consumer each keep their own plugin state, so a
//! host that leaves for good (a StatefulSet scaled down, a box retired) would take with it the windows its
//! aggregates held open, and their rows would never be written. Every host watches the others' reports
//! (`cluster::report`, refreshed every few seconds): a host whose state is in the lake and which has sent
//! none for `consumer.adopt_after` is taken for gone, and the first host to notice adopts it:
//!
//! 1. It reads the departed host's plugin state from the lake, restores it into fresh instances of its own
//!    plugins, and closes every window the state holds (a watermark past all time). These are partial rows
//!    for windows still open elsewhere, which add up with the other hosts' rows for the same windows as any
//!    two hosts' rows do.
//! 2. It commits them in the departed host's name with an empty state in place of its own
//!    (`lake::adoption`): a second adopter finds nothing left to adopt, and the departed host, should it
//!    come back, starts empty instead of closing those windows again.
//!
//! A host taken for gone while alive (cut off from NATS for that long) is kept apart by the commit log, not
//! by the reports: whichever of its next commit and the adoption comes second gives up, so no window is
//! written twice (see `lake::adoption`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;

use super::chain::Chain;
use super::runner::{Processor, Stages, gold_row};
use crate::bus::deploys::Deploys;
use crate::lake::rows::GoldRow;
use crate::runtime::{Clock, Plugin};

/// How often the reports are read, and the lake's hosts looked over.
const LOOK_EVERY: Duration = Duration::from_secs(5);

/// Reports read longer ago than this say nothing about who is there now.
const STALE_AFTER: Duration = Duration::from_secs(30);

/// How long an adoption that failed first waits before it is tried again; each failure doubles it, up to
/// [`RETRY_AFTER_MAX`].
const RETRY_AFTER: Duration = Duration::from_secs(60);
const RETRY_AFTER_MAX: Duration = Duration::from_secs(3600);

/// How much longer each host waits than the one before it in name order (of the hosts reporting): the
/// first adopts, the others find the adoption done instead of racing it.
const STAGGER: Duration = Duration::from_secs(15);

/// Which hosts of the pipeline have reported, and since when the reports have been read without a break.
#[derive(Debug, Default)]
pub struct Presence(Mutex<Seen>);

#[derive(Debug, Default)]
struct Seen {
    /// Since when every read of the reports succeeded (`None` after a failed one: a host is not taken for
    /// gone while NATS, not the host, is away).
    since: Option<Instant>,
    /// When the last read succeeded.
    last_read: Option<Instant>,
    /// When each host was last among the reports.
    hosts: HashMap<String, Instant>,
}

impl Presence {
    /// How long `host` has been missing from the reports, as far as reads without a break tell; `None`
    /// when the reports have not been read lately.
    pub fn absent_for(&self, host: &str) -> Option<Duration> {
        let seen = self.0.lock().expect("not poisoned");
        let (since, last_read) = (seen.since?, seen.last_read?);
        if last_read.elapsed() > STALE_AFTER {
            return None;
        }
        let from = seen.hosts.get(host).map_or(since, |at| (*at).max(since));
        Some(last_read.saturating_duration_since(from))
    }

    /// How many of the hosts reporting come before `host` by name.
    fn rank(&self, host: &str) -> u32 {
        let seen = self.0.lock().expect("not poisoned");
        seen.hosts
            .iter()
            .filter(|(h, at)| Some(**at) == seen.last_read && h.as_str() < host)
            .count() as u32
    }

    fn read(&self, hosts: impl IntoIterator<Item = String>) {
        let now = Instant::now();
        let mut seen = self.0.lock().expect("not poisoned");
        seen.since.get_or_insert(now);
        seen.last_read = Some(now);
        for host in hosts {
            seen.hosts.insert(host, now);
        }
    }

    fn failed(&self) {
        let mut seen = self.0.lock().expect("not poisoned");
        seen.since = None;
        seen.hosts.clear();
    }
}

/// Reads the hosts' reports into `presence` every [`LOOK_EVERY`] until `stop`.
pub async fn watch(
    deploys: Deploys,
    presence: Arc<Presence>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(LOOK_EVERY);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        match deploys.reporting().await {
            Ok(hosts) => presence.read(hosts),
            Err(e) => {
                tracing::debug!(
                    "cannot read the hosts' reports (no host is adopted meanwhile): {e:#}"
                );
                presence.failed();
            }
        }
    }
}

/// The processor's side: which departed hosts to adopt, and when.
pub struct Adopter {
    presence: Arc<Presence>,
    after: Duration,
    /// Hosts dealt with during their current absence: adopted, found with nothing to adopt (`None`), or to
    /// try again at the time given, after a failure (with the wait before it).
    dealt_with: HashMap<String, Option<(Instant, Duration)>>,
    next_look: Instant,
}

impl Adopter {
    pub fn new(presence: Arc<Presence>, after: Duration) -> Self {
        Adopter {
            presence,
            after,
            dealt_with: HashMap::new(),
            next_look: Instant::now() + LOOK_EVERY,
        }
    }

    /// The first host of `hosts` gone long enough (`after`, and this host's turn after the others before
    /// it: see [`STAGGER`]) and not dealt with during this absence.
    fn due(&mut self, me: &str, hosts: &[(String, u64)]) -> Option<String> {
        let now = Instant::now();
        let after = self.after + STAGGER * self.presence.rank(me);
        let mut due = None;
        for (host, _) in hosts {
            let absent = self.presence.absent_for(host);
            if absent.is_none_or(|a| a < after) {
                // Here (or not known to be away): a later absence is a new one.
                if absent.is_some_and(|a| a < self.after) {
                    self.dealt_with.remove(host);
                }
                continue;
            }
            let waiting = match self.dealt_with.get(host) {
                None => false,
                Some(None) => true,
                Some(Some((retry_at, _))) => now < *retry_at,
            };
            if !waiting && due.is_none() {
                due = Some(host.clone());
            }
        }
        due
    }
}

impl Processor {
    /// Adopts a departed host, if one is due (see the module documentation). Runs between batches, after
    /// the commit under way: the adoption's commit takes the next epoch. Failing to adopt does not stop the
    /// pipeline; it is tried again later.
    pub fn adopt_departed(&mut self) -> Result<()> {
        let Some(adopter) = self.adopter.as_mut() else {
            return Ok(());
        };
        if Instant::now() < adopter.next_look {
            return Ok(());
        }
        adopter.next_look = Instant::now() + LOOK_EVERY;
        // A host that commits learns of the others' states at each commit; an idle one reads the log.
        if self.is_idle() {
            self.refresh_lake();
        }
        let me = self.lake.host().to_string();
        let adopter = self.adopter.as_mut().expect("checked above");
        let Some(host) = adopter.due(&me, &self.lake.others_with_state()) else {
            return Ok(());
        };
        self.settle()?;
        let outcome = self.adopt(&host);
        let adopter = self.adopter.as_mut().expect("checked above");
        match outcome {
            Ok(_) => {
                adopter.dealt_with.insert(host, None);
            }
            Err(e) => {
                let wait = match adopter.dealt_with.get(&host) {
                    Some(Some((_, waited))) => (*waited * 2).min(RETRY_AFTER_MAX),
                    _ => RETRY_AFTER,
                };
                tracing::warn!(
                    %host,
                    "cannot adopt the windows of a departed host for now (trying again in {}s): {e:#}",
                    wait.as_secs()
                );
                adopter
                    .dealt_with
                    .insert(host, Some((Instant::now() + wait, wait)));
            }
        }
        Ok(())
    }

    /// Closes the windows `host` left open and commits their rows in its name. Returns how many rows, or
    /// `None` when its state held nothing to adopt.
    fn adopt(&mut self, host: &str) -> Result<Option<usize>> {
        // The open epoch waits meanwhile: its messages are kept ours.
        let _extending = self.extend_open_epoch_meanwhile();
        // Up to date: an adoption or a whole state of the host since the last look changes what is due.
        self.refresh_lake();
        let Some(departed) = self.runtime.block_on(self.lake.departed(host))? else {
            return Ok(None);
        };
        let rows = close_all(&self.chain, &self.stages, &self.clock, &departed.state)
            .with_context(|| format!("closing the windows of host {host}'s state"))?;
        // Committed even with no rows: the empty state it leaves marks the host adopted, so that no host
        // reads its state again (one read of its last whole state's record tells).
        let mut epoch = self.lake.begin_adoption(&departed, self.chain_labels());
        epoch.add_gold(&rows)?;
        let state = Bytes::from(super::state::empty()?);
        let commit = self.lake.start_adoption(&departed, epoch, state);
        let done = self.runtime.block_on(commit.run())?;
        let record = self.lake.finish_commit(done);
        // The rows are the lake's alone: the API answers from it for their windows.
        self.shared
            .recent
            .lock()
            .expect("not poisoned")
            .gold_shared_lake();
        let counters = &self.shared.counters;
        counters
            .gold_rows
            .fetch_add(rows.len() as u64, std::sync::atomic::Ordering::Relaxed);
        counters
            .adoptions
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(
            %host,
            epoch = record.epoch,
            rows = rows.len(),
            "adopted the windows a departed host left open: their rows are written in its name, and it \
             starts empty if it comes back"
        );
        Ok(Some(rows.len()))
    }
}

/// The rows of every window `state` holds open, closed by fresh instances of the chain's plugins (the
/// versions it runs now, as the departed host would after a restart).
fn close_all(
    chain: &Chain,
    stages: &Stages,
    clock: &Clock,
    state: &[Bytes],
) -> Result<Vec<GoldRow>> {
    let plugins = chain
        .stages()
        .iter()
        .zip(&stages.configs)
        .map(|(stage, config)| {
            let plugin = stage.plugin();
            Plugin::start(
                plugin.loaded().clone(),
                config,
                plugin.limits().clone(),
                clock.clone(),
            )
        })
        .collect::<Result<Vec<_>>>()?;
    let mut fresh =
        Chain::with_shape(chain.shape().clone(), plugins, Vec::new())?.named(&stages.names);
    super::state::restore(&mut fresh, &stages.names, state)?;
    let mut rows = Vec::new();
    let failures = fresh.on_watermark_parts(i64::MAX, |part| {
        rows.extend(part.into_iter().map(gold_row));
    });
    if let Some((plugin, failure)) = failures.into_iter().next() {
        anyhow::bail!("{plugin} failed to close its windows: {failure}");
    }
    Ok(rows)
}
