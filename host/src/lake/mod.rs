//! The medallion lake: bronze, silver, gold and quarantine tables as Parquet on any object store, written so
//! that after any crash, restart or redelivery every event is in its tables exactly once, and any engine
//! (DuckDB, Spark, Athena, pyarrow) reads them with Hive partitioning.
//!
//! ## The commit protocol
//!
//! The pipeline gathers an *epoch* (a set of stream messages, usually a few seconds' worth) and commits it:
//!
//! 1. Every table's files are encoded as the epoch runs and uploaded to a staging prefix
//!    (`_weir/staging/...`) that readers never look at, with the plugins' state next to them.
//! 2. The commit record (`_weir/log/<epoch>.json`: the files, the stream sequences consumed, the state) is
//!    created with a conditional put. **This is the one atomic step**: before it the epoch does not exist,
//!    after it the epoch is committed.
//! 3. The files are moved from staging to their table paths (idempotent; redone at start if interrupted).
//! 4. Only then are the stream messages acked. A message redelivered after a crash whose sequence is in the
//!    log is acked and skipped.
//!
//! [`Lake::start_commit`] hands the epoch to a [`Commit`] that runs without the lake (steps 1-3 and the wait
//! for the epoch's last Parquet pages), so the pipeline fills the next epoch meanwhile; the next commit starts
//! only after [`Lake::finish_commit`] took this one's outcome, so epoch numbers follow the stream.
//!
//! On start, the log is read (from its last checkpoint), committed epochs whose move was interrupted are
//! finished, staging left by uncommitted epochs is deleted, and the plugin state of the last commit is
//! restored. Each step has a named crash point (see [`crash`]).

mod adoption;
mod aws_profile;
pub mod compact;
pub mod crash;
pub mod files;
pub mod latency;
pub mod log;
pub mod read;
pub mod replace;
pub mod rows;
pub mod schema;
pub mod spill;
pub mod store;
#[cfg(test)]
mod testing;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use arrow_schema::DataType;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use serde::{Deserialize, Serialize};

pub use adoption::Departed;
use adoption::adopted_away;
use files::EpochFiles;
pub use log::{CommitRecord, EventClock, FileEntry, Ranges};
use rows::{DropRow, GoldRow, Mismatches, QuarantineRow, Received, SilverColumns};
pub use schema::{ColumnSpec, ColumnType, Layer};
pub use store::{Store, StoreConfig};

/// Where the lake is and how it is written (`[lake]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LakeConfig {
    /// `./lake` (the default), `file:///data/lake`, `s3://bucket/prefix`, `gs://bucket/prefix`,
    /// `az://container/prefix`, `memory://`. `WEIR_LAKE_URL` overrides it.
    pub url: String,
    /// S3-compatible stores: the endpoint (`http://127.0.0.1:8333`); AWS when absent.
    pub endpoint: Option<String>,
    /// S3: the region (default `$AWS_REGION`, else `us-east-1`).
    pub region: Option<String>,
    /// S3: address buckets by path, as most S3-compatible stores want (default: true with an endpoint).
    pub path_style: Option<bool>,
    /// Allow plain HTTP to the endpoint (local test stores).
    pub allow_http: bool,
    /// Commit at least this often (files are rolled by time this way).
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// Commit once an epoch holds this many events.
    pub commit_events: u64,
    /// Commit early once no message has come for this long: when the stream goes quiet, what arrived is
    /// committed (visible, acked) now rather than at the end of `commit_interval`. `0s` turns it off.
    #[serde(with = "humantime_serde")]
    pub commit_after_idle: Duration,
    /// A file larger than this is closed and the next rows start another (bytes, compressed). Default
    /// 128 MiB.
    pub max_file_bytes: usize,
    /// Write a checkpoint of the commit log every this many commits.
    pub checkpoint_every: u64,
    /// Requests a commit keeps in flight (uploads, then moves into place). A commit of the default pipeline
    /// writes ~70 files (tables × hour partitions): with a store 200 ms away, 8 at a time held each commit
    /// ~10 round trips longer than 32 (300k events: 13.6k → 16.9k events/s).
    pub upload_concurrency: usize,
    /// How often `weir run` merges the small files of partitions whose hour ended `compact_after` ago or
    /// more (see [`compact`]); `0s` leaves it to `weir lake compact`.
    #[serde(with = "humantime_serde")]
    pub compact_every: Duration,
    /// Compaction leaves a partition alone until its hour ended this long ago: late events still land in
    /// recent ones.
    #[serde(with = "humantime_serde")]
    pub compact_after: Duration,
}

impl Default for LakeConfig {
    fn default() -> Self {
        LakeConfig {
            url: "./lake".into(),
            endpoint: None,
            region: None,
            path_style: None,
            allow_http: false,
            commit_interval: Duration::from_secs(10),
            commit_events: 100_000,
            commit_after_idle: Duration::from_secs(1),
            max_file_bytes: 128 << 20,
            checkpoint_every: 100,
            upload_concurrency: 32,
            compact_every: Duration::from_secs(3600),
            compact_after: Duration::from_secs(3600),
        }
    }
}

impl LakeConfig {
    pub fn store(&self) -> StoreConfig {
        StoreConfig {
            url: self.url.clone(),
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            path_style: self.path_style,
            allow_http: self.allow_http,
        }
    }
}

/// A lake open for writing by one host.
pub struct Lake {
    store: Store,
    config: LakeConfig,
    host: String,
    committed: Ranges,
    last_epoch: u64,
    since_checkpoint: u64,
    /// This host's state as of its last commit: the whole state, then the changes of each later commit.
    state_chain: Vec<Bytes>,
    /// Where event time had got to at the last commit of the host whose state was restored.
    event_clock: Option<EventClock>,
    /// The state restored is another host's (see [`Lake::open`]): the next commit saves the whole state.
    inherited: bool,
    /// The host whose state this one carries on (exclusive mode), until a whole state of this host's own
    /// names it in the log (see [`CommitRecord::inherited_from`]).
    inherited_from: Option<String>,
    /// Per host, the epoch of its last whole-state commit (kept in checkpoints).
    bases: BTreeMap<String, u64>,
    /// The types this host gives its gold columns (see [`Epoch::add_gold`]).
    gold_types: HashMap<String, Vec<(String, DataType)>>,
    /// The gold columns every record read so far names, other hosts' too (kept in checkpoints: the types
    /// of a column only another host has seen yet must outlive the records a checkpoint passes).
    gold_columns: BTreeMap<String, Vec<(String, String)>>,
    pub mismatches: Arc<Mismatches>,
    /// The host that adopted this host's state (see `pipeline::adopt`), once a record of it is seen: this
    /// host's state in memory is no longer the lake's, so it commits nothing more.
    adopted_away: Option<String>,
}

/// An epoch being written.
pub struct Epoch {
    files: EpochFiles,
    sequences: Ranges,
    ticks: Vec<(u64, i64)>,
    event_clock: Option<EventClock>,
    dropped: BTreeMap<String, u64>,
    quarantined: BTreeMap<String, u64>,
    chain: Vec<String>,
    gold_types: HashMap<String, Vec<(String, DataType)>>,
    pub events: u64,
    started: Instant,
    /// The sequences gold files are named by when the epoch has none (an adoption's).
    gold_seqs: Option<(u64, u64)>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Retries `attempt` with backoff until it succeeds: an unreachable store holds the commit (and so the acks)
/// instead of losing anything; it recovers by itself when the store comes back.
async fn retry<T, F, Fut>(what: &str, attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    match retry_unless(what, attempt, |_| false).await {
        Ok(v) => v,
        Err(_) => unreachable!("no failure is final"),
    }
}

/// Whether a store error refuses the request itself (access denied, credentials not taken), which no wait
/// mends, unlike the store being away or slow.
pub(crate) fn is_refusal(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<object_store::Error>(),
            Some(
                object_store::Error::PermissionDenied { .. }
                    | object_store::Error::Unauthenticated { .. }
            )
        )
    })
}

/// [`retry`] for the commit log's reads and writes, which give up at once on a [`log::Unrecoverable`] failure.
pub(crate) async fn retry_log<T, F, Fut>(what: &str, attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    retry_unless(what, attempt, |e| {
        e.chain().any(|c| c.is::<log::Unrecoverable>())
    })
    .await
}

/// Uploads a file this host wrote, retrying as [`retry`] does while the store fails; a spilled file that
/// cannot be read back from local disk fails at once instead, since waiting cannot fix a disk. The commit
/// then fails and `weir run` stops with the reason, leaving its messages unacked for a restart to redo.
async fn retry_upload(
    store: &dyn object_store::ObjectStore,
    location: &object_store::path::Path,
    data: &spill::FileData,
) -> Result<()> {
    retry_unless(
        &format!("uploading {location}"),
        || data.upload(store, location),
        |e| e.chain().any(|c| c.is::<spill::SpillReadError>()),
    )
    .await
}

/// The lake's requests being retried right now, across the process: while any is, the store is not
/// answering as it should, and `/ready` says so.
static RETRYING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
/// Failed attempts at the lake's requests, each retried (`weir_lake_store_retries_total`).
static RETRIES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Whether a request to the lake's store is failing and being retried at the moment.
pub fn store_failing() -> bool {
    RETRYING.load(std::sync::atomic::Ordering::Relaxed) > 0
}

/// Failed attempts at the lake's requests so far, each retried.
pub fn store_retries() -> u64 {
    RETRIES.load(std::sync::atomic::Ordering::Relaxed)
}

/// Counts a retry loop in [`RETRYING`] from its first failure until it ends, however it ends (a commit
/// task may be dropped mid-retry).
struct Retrying;

impl Retrying {
    fn start() -> Self {
        RETRYING.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Retrying
    }
}

impl Drop for Retrying {
    fn drop(&mut self) {
        RETRYING.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// [`retry`], except that a failure for which `is_final` holds is returned at once.
pub(crate) async fn retry_unless<T, F, Fut>(
    what: &str,
    mut attempt: F,
    is_final: impl Fn(&anyhow::Error) -> bool,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut delay = Duration::from_millis(200);
    let mut failures = 0u32;
    let mut retrying = None;
    loop {
        match attempt().await {
            Ok(v) => {
                if failures > 0 {
                    tracing::info!("{what}: succeeded after {failures} failed attempts");
                }
                return Ok(v);
            }
            Err(e) if is_final(&e) => return Err(e.context(format!("{what} failed"))),
            Err(e) => {
                failures += 1;
                RETRIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                retrying.get_or_insert_with(Retrying::start);
                tracing::warn!("{what} failed (attempt {failures}), retrying in {delay:?}: {e:#}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}

impl Lake {
    /// Opens the lake: reads the commit log, finishes interrupted commits, removes uncommitted staging.
    ///
    /// `sole`: this host reads the stream alone (exclusive mode), so the plugin state that matches the lake
    /// is the last committing host's, whatever its name: a container that comes back under a new hostname
    /// carries on from it instead of starting empty. Hosts that share a consumer each restore their own.
    pub async fn open(config: LakeConfig, host: &str, sole: bool) -> Result<Self> {
        let store = Store::open(&config.store())?;
        retry_log("checking the store's conditional writes", || {
            log::check_conditional_writes(&store, host)
        })
        .await?;
        let state = retry_log("reading the commit log", || log::read(&store)).await?;
        let mut lake = Lake {
            store,
            host: host.to_string(),
            committed: state.committed.clone(),
            last_epoch: state.last_epoch,
            since_checkpoint: state.records.len() as u64,
            state_chain: Vec::new(),
            event_clock: None,
            inherited: false,
            inherited_from: None,
            bases: state.checkpoint.bases.clone(),
            gold_types: HashMap::new(),
            gold_columns: BTreeMap::new(),
            mismatches: Arc::new(Mismatches::default()),
            adopted_away: None,
            config,
        };
        // Files a later replay in place replaced are gone for good: not moved again.
        let replaced = log::replaced_paths(&state.records);
        for record in &state.records {
            republish(
                &lake.store,
                record,
                lake.config.upload_concurrency,
                &replaced,
            )
            .await?;
        }
        lake.clean_staging().await?;
        for record in &state.records {
            note_base(&mut lake.bases, record);
        }
        // Each host's first commit, and the first after it took another's state over, saves the whole state,
        // so the host whose whole state is newest is the one that has committed since. An adoption's empty
        // state (a host gone from a shared consumer, see `pipeline::adopt`) is no host's own: passed over.
        let mut heir_of = None;
        if sole {
            let mut newest_first: Vec<(&String, u64)> = lake
                .bases
                .iter()
                .map(|(host, epoch)| (host, *epoch))
                .collect();
            newest_first.sort_by_key(|(_, epoch)| std::cmp::Reverse(*epoch));
            for (host, epoch) in newest_first {
                let adopted = match state.records.iter().find(|r| r.epoch == epoch) {
                    Some(record) => record.adopted_by.is_some(),
                    // Older than the checkpoint: read on its own. One gone (removed by hand) is taken
                    // for a host's own, as before adoptions.
                    None => {
                        match retry_log("reading the commit log", || {
                            log::record(&lake.store, epoch)
                        })
                        .await
                        {
                            Ok(record) => record.adopted_by.is_some(),
                            Err(e) => {
                                tracing::warn!("{e:#}");
                                false
                            }
                        }
                    }
                };
                if !adopted {
                    heir_of = Some(host.clone()).filter(|last| *last != lake.host);
                    break;
                }
            }
        }
        lake.inherited = heir_of.is_some();
        lake.inherited_from = heir_of.clone();
        if let Some(last) = &heir_of {
            tracing::info!(
                host = %lake.host,
                "carrying on from the plugin state host {last} committed last (exclusive mode: one host at a time)"
            );
        } else if !lake.bases.contains_key(&lake.host) && !lake.bases.is_empty() {
            tracing::warn!(
                host = %lake.host,
                "no plugin state of this host in the lake, which holds other hosts' (`{}`): the plugins start \
                 empty. A host that restarts under another name (a new container) loses its state; give it a \
                 stable name (`pipeline.host`, a StatefulSet)",
                lake.bases.keys().cloned().collect::<Vec<_>>().join("`, `")
            );
        }
        let owner = heir_of.unwrap_or_else(|| lake.host.clone());
        let adopted;
        (lake.state_chain, lake.event_clock, adopted) =
            lake.read_state_chain(&owner, &state.records).await?;
        // The state is an adoption's, empty (see `pipeline::adopt`): the first commit saves a whole state of
        // this host's own, so that its last whole state tells whether it was adopted since.
        lake.inherited |= adopted;
        let mut gold_columns = state.checkpoint.gold_columns.clone();
        for record in &state.records {
            log::merge_gold_columns(&mut gold_columns, &record.gold_columns);
        }
        lake.gold_types = gold_columns
            .iter()
            .map(|(table, columns)| {
                let columns = columns
                    .iter()
                    .map(|(c, t)| (c.clone(), type_from_name(t)))
                    .collect();
                (table.clone(), columns)
            })
            .collect();
        lake.gold_columns = gold_columns;
        Ok(lake)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// The gold tables the lake holds rows of (as their commits named them, `gold_<table>`).
    pub fn gold_tables(&self) -> impl Iterator<Item = &str> {
        self.gold_types.keys().map(String::as_str)
    }

    /// Whether a stream sequence is already committed (a redelivery to skip).
    pub fn is_committed(&self, seq: u64) -> bool {
        self.committed.contains(seq)
    }

    /// Where a host that reads the stream alone resumes: the first sequence at or after `first` (the
    /// stream's first) that no commit holds.
    pub fn resume_from(&self, first: u64) -> u64 {
        self.committed.first_missing_from(first.max(1))
    }

    /// Reads commit records other hosts added since the last look (before deciding about redeliveries).
    /// Returns whether there was one of another host's (or a replay in place's), as
    /// [`Committed::others_committed`] tells for the records a commit steps over.
    pub async fn refresh(&mut self) -> Result<bool> {
        let mut others = false;
        // Epochs are numbered without gaps (a commit takes the next free one), so the records created since
        // this host last looked are those after the last epoch it knows: one listing, and a read of each.
        for record in log::records_after(&self.store, self.last_epoch).await? {
            others |= record.host != self.host || record.replay.is_some();
            if record.host == self.host && record.adopted_by.is_some() {
                self.adopted_away = record.adopted_by.clone();
            }
            note_committed(
                &mut self.committed,
                &mut self.bases,
                &record,
                &Ranges::default(),
                &[],
            );
            log::merge_gold_columns(&mut self.gold_columns, &record.gold_columns);
            self.last_epoch = self.last_epoch.max(record.epoch);
        }
        Ok(others)
    }

    /// The plugin state saved by this host's commits: its last whole state, then each later commit's changes
    /// (apply them in order). Empty for a new host.
    pub fn state_chain(&self) -> &[Bytes] {
        &self.state_chain
    }

    /// Where event time had got to when the state in [`Lake::state_chain`] was committed.
    pub fn event_clock(&self) -> Option<EventClock> {
        self.event_clock
    }

    /// Whether the next commit should save the whole plugin state rather than the changes (the first commit
    /// of a host, and one per checkpoint interval, so restores read a bounded chain).
    pub fn wants_full_state(&self) -> bool {
        self.inherited || !self.bases.contains_key(&self.host) || self.checkpoint_due()
    }

    /// Whether the next commit writes the log's checkpoint too.
    fn checkpoint_due(&self) -> bool {
        self.since_checkpoint + 1 >= self.config.checkpoint_every
    }

    /// The plugin state `host` committed: its last whole state and each later commit's changes; where
    /// event time had got to at the last of them; and whether that whole state is an adoption's.
    async fn read_state_chain(
        &self,
        host: &str,
        since_checkpoint: &[CommitRecord],
    ) -> Result<(Vec<Bytes>, Option<EventClock>, bool)> {
        let Some(&base) = self.bases.get(host) else {
            return Ok((Vec::new(), None, false));
        };
        // The chain starts at the host's last whole state, which may be older than the checkpoint.
        let older;
        let records: &[CommitRecord] =
            if since_checkpoint.first().is_some_and(|r| r.epoch <= base) || base == 0 {
                since_checkpoint
            } else {
                older = retry_log("reading the commit log", || {
                    log::records_after(&self.store, base.saturating_sub(1))
                })
                .await?;
                &older
            };
        let mut chain = Vec::new();
        let mut clock = None;
        let mut adopted = false;
        for record in records.iter().filter(|r| r.host == host && r.epoch >= base) {
            adopted |= record.epoch == base && record.adopted_by.is_some();
            clock = record.event_clock.or(clock);
            let Some(path) = &record.state else { continue };
            let location = self.store.path(path);
            let bytes = retry("reading the plugin state", || async {
                Ok(self.store.store.get(&location).await?.bytes().await?)
            })
            .await;
            if record.state_full {
                chain.clear();
            }
            chain.push(bytes);
        }
        Ok((chain, clock, adopted))
    }

    pub fn last_epoch(&self) -> u64 {
        self.last_epoch
    }

    /// Starts an epoch whose data the plugins `chain` (`name@version`) produce.
    pub fn begin(&self, chain: Vec<String>) -> Epoch {
        let metadata = vec![
            ("weir.chain".to_string(), chain.join(",")),
            ("weir.host".to_string(), self.host.clone()),
        ];
        Epoch {
            files: EpochFiles::background(&self.host, self.config.max_file_bytes, metadata.clone())
                .unwrap_or_else(|e| {
                    tracing::warn!("{e:#}; encoding Parquet on the pipeline's thread");
                    EpochFiles::new(&self.host, self.config.max_file_bytes, metadata)
                }),
            sequences: Ranges::default(),
            ticks: Vec::new(),
            event_clock: None,
            dropped: BTreeMap::new(),
            quarantined: BTreeMap::new(),
            chain,
            gold_types: self.gold_types.clone(),
            events: 0,
            started: Instant::now(),
            gold_seqs: None,
        }
    }

    /// Commits an epoch (see the module documentation); `state` is the plugins' state after it. Returns the
    /// record once the epoch's files are in their tables. Only after this may the messages be acked.
    pub async fn commit(
        &mut self,
        epoch: Epoch,
        state: Option<Bytes>,
        state_full: bool,
    ) -> Result<CommitRecord> {
        let done = self.start_commit(epoch, state, state_full)?.run().await?;
        Ok(self.finish_commit(done))
    }

    /// Hands an epoch to a [`Commit`] that runs without the lake, so the pipeline can fill the next epoch
    /// while this one is encoded and uploaded. At most one may run at a time: epochs commit in order, and the
    /// next must start only after [`Lake::finish_commit`] took this one's outcome.
    ///
    /// Refuses an epoch holding sequences another host committed since they reached this one (a message
    /// redelivered to a second host while the first still held it): the commit's own look at the log
    /// starts after the epochs this host knows, so it would not see them.
    pub fn start_commit(
        &mut self,
        epoch: Epoch,
        state: Option<Bytes>,
        state_full: bool,
    ) -> Result<Commit> {
        if let Some(by) = &self.adopted_away {
            anyhow::bail!(adopted_away(&self.host, by));
        }
        if self.committed.overlaps(&epoch.sequences) {
            anyhow::bail!(
                "this host's open epoch holds stream sequences another host has committed meanwhile (a \
                 message delivered to two hosts: redelivered after consumer.ack_wait, or after a server \
                 restart): stopping without committing it; a restart skips what is committed and reads the \
                 rest again"
            );
        }
        // A later restore of this host starts from this whole state, not from its own chain before it.
        self.inherited &= !state_full;
        let inherited_from = state_full.then(|| self.inherited_from.take()).flatten();
        // The next epoch types its gold columns as this one did, before this one is in the log.
        self.gold_types = epoch.gold_types.clone();
        Ok(Commit {
            store: self.store.clone(),
            host: self.host.clone(),
            upload_concurrency: self.config.upload_concurrency.max(1),
            last_epoch: self.last_epoch,
            // Only a checkpoint needs the whole log's sequences, bases and gold columns.
            checkpoint: self.checkpoint_due().then(|| log::Checkpoint {
                epoch: 0,
                sequences: self.committed.clone(),
                gold_columns: self.gold_columns.clone(),
                bases: self.bases.clone(),
            }),
            epoch,
            state,
            state_full,
            fence: None,
            adopting: None,
            inherited_from,
        })
    }

    /// Takes in a finished [`Commit`]: what it committed, and the other hosts' epochs it stepped over.
    pub fn finish_commit(&mut self, done: Committed) -> CommitRecord {
        let Committed {
            record,
            others,
            other_bases,
            other_gold_columns,
            checkpointed,
            others_wrote: _,
        } = done;
        note_committed(
            &mut self.committed,
            &mut self.bases,
            &record,
            &others,
            &other_bases,
        );
        log::merge_gold_columns(&mut self.gold_columns, &other_gold_columns);
        log::merge_gold_columns(&mut self.gold_columns, &record.gold_columns);
        self.last_epoch = self.last_epoch.max(record.epoch);
        // A checkpoint put off is due again at the next commit.
        self.since_checkpoint = if checkpointed {
            0
        } else {
            self.since_checkpoint + 1
        };
        record
    }

    /// Deletes staging this host left behind: of epochs that never committed (a crash before their record)
    /// and of committed ones already moved. A committed epoch whose files are still staged (a crash after
    /// its record, and another host's checkpoint past it since, so the records read at open did not show
    /// it) is moved into place first. Adoptions abandoned an hour ago or more go too, whoever's.
    async fn clean_staging(&self) -> Result<()> {
        let mut leftovers = Vec::new();
        let mut staged_committed = std::collections::BTreeSet::new();
        for (name, location) in staged_files(&self.store).await? {
            if adoption::abandoned(&name) {
                leftovers.push(location);
                continue;
            }
            let Some(first) = staged_first(&name, &self.host) else {
                continue;
            };
            if self.committed.contains(first) {
                staged_committed.insert(staging_dir(&self.host, first));
            }
            leftovers.push(location);
        }
        if !staged_committed.is_empty() {
            let records =
                retry_log("reading the commit log", || log::all_records(&self.store)).await?;
            let replaced = log::replaced_paths(&records);
            for record in records
                .iter()
                .filter(|r| r.host == self.host && staged_committed.contains(&r.staging))
            {
                tracing::warn!(
                    epoch = record.epoch,
                    "moving the files of a committed epoch into place: this host stopped after its commit \
                     record, and the log's checkpoint has passed it since"
                );
                republish(
                    &self.store,
                    record,
                    self.config.upload_concurrency,
                    &replaced,
                )
                .await?;
            }
        }
        if !leftovers.is_empty() {
            tracing::info!(
                files = leftovers.len(),
                "removing staged files of uncommitted or moved epochs"
            );
        }
        for location in leftovers {
            self.store
                .delete_if_present(&location)
                .await
                .context("cannot clean the staging area")?;
        }
        Ok(())
    }
}

/// One epoch's commit, run apart from the [`Lake`] (see [`Lake::start_commit`]).
pub struct Commit {
    store: Store,
    host: String,
    upload_concurrency: usize,
    /// The lake's last epoch when the commit started: this one takes the next free number.
    last_epoch: u64,
    /// When this commit also writes the log's checkpoint: what the log held before it (its epoch is set
    /// once the commit has its own).
    checkpoint: Option<log::Checkpoint>,
    epoch: Epoch,
    state: Option<Bytes>,
    state_full: bool,
    /// Whether this host may still write the record (see [`Commit::fenced_by`]).
    fence: Option<Fence>,
    /// An adoption: written for `host`, gone, by another (see [`Lake::start_adoption`]).
    adopting: Option<adoption::Adopting>,
    /// See [`CommitRecord::inherited_from`].
    inherited_from: Option<String>,
}

/// How much longer a host may still make an epoch count (`None`: it may not): an exclusive reader's lease,
/// checked just before each attempt at the commit record, which must be done within that time.
pub type Fence = Arc<dyn Fn() -> Option<std::time::Duration> + Send + Sync>;

/// What a [`Commit`] did, for [`Lake::finish_commit`].
pub struct Committed {
    pub record: CommitRecord,
    /// Sequences of other hosts' epochs found in the log on the way to a free epoch number.
    others: Ranges,
    /// Those of the epochs that saved their host's whole plugin state, as (host, epoch): a checkpoint
    /// written by this commit must name them, or those hosts would restart with no state.
    other_bases: Vec<(String, u64)>,
    /// The gold columns those epochs name.
    other_gold_columns: BTreeMap<String, Vec<(String, String)>>,
    /// Whether it wrote the log's checkpoint (one due is put off while another host's files are staged).
    checkpointed: bool,
    /// Whether a record it stepped over wrote files (an adoption's hold rows but no sequences).
    others_wrote: bool,
}

impl Committed {
    /// Whether another host (or a replay in place) committed to the lake since this host's commit before.
    pub fn others_committed(&self) -> bool {
        !self.others.0.is_empty() || self.others_wrote
    }
}

/// Where an epoch's files wait for its commit: `_weir/staging/<host>-<first sequence, 20 digits>`.
fn staging_dir(host: &str, first: u64) -> String {
    format!("{STAGING}/{host}-{first:020}")
}

/// The first sequence of one of `host`'s staging directories, from its name (see [`staging_dir`]); `None`
/// for another host's, even one whose name starts with this one's (`edge`, `edge-2`).
fn staged_first(name: &str, host: &str) -> Option<u64> {
    name.strip_prefix(host)?
        .strip_prefix('-')
        .filter(|digits| digits.len() == 20)?
        .parse()
        .ok()
}

/// Adds a commit to what is committed: its sequences, those of the other hosts' epochs it stepped over, and
/// the bases of its host and theirs when they saved the whole state.
fn note_committed(
    committed: &mut Ranges,
    bases: &mut BTreeMap<String, u64>,
    record: &CommitRecord,
    others: &Ranges,
    other_bases: &[(String, u64)],
) {
    committed.extend(others);
    for (host, epoch) in other_bases {
        let base = bases.entry(host.clone()).or_insert(*epoch);
        *base = (*base).max(*epoch);
    }
    committed.extend(&record.sequences);
    note_base(bases, record);
}

/// A record's part in each host's last whole state: its own, when it saved one; and the host whose state it
/// carries on, which no longer has one of its own (no host adopts it: its windows are this host's now).
fn note_base(bases: &mut BTreeMap<String, u64>, record: &CommitRecord) {
    if record.state_full && record.state.is_some() {
        bases.insert(record.host.clone(), record.epoch);
    }
    if let Some(from) = &record.inherited_from {
        bases.remove(from);
    }
}

/// Other hosts' epochs a commit stepped over on its way to a free epoch number.
#[derive(Default)]
struct SteppedOver {
    others: Ranges,
    other_bases: Vec<(String, u64)>,
    other_gold_columns: BTreeMap<String, Vec<(String, String)>>,
    others_wrote: bool,
}

/// Creates `record` (the one atomic step of a commit) under the next free epoch number, stepping over the
/// epochs other hosts took first, while `fence` holds. Refuses when a record stepped over says this commit
/// must not count: its host was adopted, or (for an adoption) its host is back or was adopted first.
async fn create_record(
    store: &Store,
    record: &mut CommitRecord,
    fence: Option<&Fence>,
    adopting: Option<&adoption::Adopting>,
) -> Result<SteppedOver> {
    let mut stepped = SteppedOver::default();
    loop {
        let outcome = retry_log("writing the commit record", || async {
            let lapsed = || -> anyhow::Error {
                log::Unrecoverable(match adopting {
                    Some(_) => "the adoption took too long (the store away?): not writing its record, \
                                as its staged files may be removed as abandoned; it is tried again"
                        .into(),
                    None => "this host's exclusive lease is lost, or was not renewed in time, so \
                             another host may hold it: not writing the commit record (the lease's holder \
                             reads the epoch again)"
                        .into(),
                })
                .into()
            };
            match fence {
                None => log::create(store, record).await,
                Some(fence) => {
                    // A write still waiting on the store when the lease may have passed to another host
                    // is given up (the store may yet take a request already sent: this narrows the
                    // window to the request's flight, which only a token checked by the store closes).
                    // Tried again (with the fence checked again): one that did land is then found.
                    let left = fence().ok_or_else(lapsed)?;
                    tokio::time::timeout(left, log::create(store, record))
                        .await
                        .map_err(|_| {
                            anyhow::anyhow!(
                                "the store did not take the commit record within the {left:?} it \
                                 may still be written in"
                            )
                        })?
                }
            }
        })
        .await?;
        match outcome {
            log::CreateOutcome::Created => return Ok(stepped),
            log::CreateOutcome::Taken(existing) if *existing == *record => return Ok(stepped),
            log::CreateOutcome::Taken(existing) => {
                // This host was adopted (an adoption's commit too: its host's next commit then stops).
                let host = &record.host;
                let me = adopting.map_or(host, |a| &a.by);
                if existing.host == *me
                    && let Some(by) = &existing.adopted_by
                {
                    anyhow::bail!(adopted_away(me, by));
                }
                if adopting.is_some()
                    && existing.host == *host
                    && let Some(by) = &existing.adopted_by
                {
                    anyhow::bail!("host {by} adopted host {host} first");
                }
                // The host an adoption writes for committed since its state was read: it is back.
                if let Some(adopting) = adopting
                    && existing.host == *host
                    && existing.epoch > adopting.read_through
                {
                    anyhow::bail!(
                        "host {host} committed epoch {} after its state was read: it is back, so its \
                         state is not adopted",
                        existing.epoch
                    );
                }
                // Another host committed this epoch number first: take the next one.
                if existing.sequences.overlaps(&record.sequences) {
                    anyhow::bail!(
                        "epoch {} of host {} covers stream sequences this host also wrote: two hosts \
                         consumed the same messages (share one durable consumer, do not run two)",
                        existing.epoch,
                        existing.host
                    );
                }
                stepped.others.extend(&existing.sequences);
                stepped.others_wrote |= !existing.tables.is_empty();
                if existing.state_full && existing.state.is_some() {
                    stepped
                        .other_bases
                        .push((existing.host.clone(), existing.epoch));
                }
                log::merge_gold_columns(&mut stepped.other_gold_columns, &existing.gold_columns);
                record.epoch = existing.epoch + 1;
            }
        }
    }
}

impl Commit {
    /// Writes the record only while `fence` holds: a record written after this host's lease ran out could
    /// count sequences the lease's next holder reads too, and staged files that holder, under the same
    /// host name, has cleaned away.
    pub fn fenced_by(mut self, fence: Fence) -> Commit {
        self.fence = Some(fence);
        self
    }

    /// The stream sequences this commit covers.
    pub fn sequences(&self) -> &Ranges {
        &self.epoch.sequences
    }

    /// Finishes the epoch's files, stages them with the state, creates the commit record (the atomic step)
    /// and moves the files to their tables.
    pub async fn run(self) -> Result<Committed> {
        crash::point("commit.start");
        let Commit {
            store,
            host,
            upload_concurrency,
            last_epoch,
            checkpoint,
            epoch,
            state,
            state_full,
            fence,
            adopting,
            inherited_from,
        } = self;
        let Epoch {
            files,
            sequences,
            ticks,
            event_clock,
            dropped,
            quarantined,
            chain,
            gold_types,
            ..
        } = epoch;
        let first = sequences.0.first().map_or(0, |r| r.0);
        // An adoption stages apart from the host it writes for, under a name no host's staging has.
        let staging = match &adopting {
            Some(adopting) => format!("{STAGING}/{}", adopting.staging),
            None => staging_dir(&host, first),
        };
        // Waits for the encoder thread's last row groups: off the runtime's few worker threads.
        let finished = tokio::task::spawn_blocking(move || files.finish_all())
            .await
            .context("the Parquet encoder's finish panicked")??;
        let mut tables: BTreeMap<String, Vec<FileEntry>> = BTreeMap::new();
        let uploads = finished.into_iter().map(|f| {
            let path = format!("{}/{}", f.table, f.relative);
            tables.entry(f.table.clone()).or_default().push(FileEntry {
                path: path.clone(),
                rows: f.rows,
                bytes: f.data.len(),
                min_seq: f.min_seq,
                max_seq: f.max_seq,
            });
            (store.path(&format!("{staging}/{path}")), f.data)
        });
        let uploads: Vec<_> = uploads.collect();
        // What an adoption that commits nothing removes again: no host's clean-up claims its staging.
        let mut staged: Vec<object_store::path::Path> = uploads
            .iter()
            .map(|(location, _)| location.clone())
            .collect();
        staged.push(store.path(&format!("{staging}/state.bin")));
        futures::stream::iter(uploads)
            .map(|(location, data)| {
                let store = store.clone();
                async move { retry_upload(&*store.store, &location, &data).await }
            })
            .buffer_unordered(upload_concurrency)
            .try_collect::<Vec<()>>()
            .await?;
        let state_path = match state {
            Some(bytes) => {
                let staged = store.path(&format!("{staging}/state.bin"));
                retry("uploading the plugin state", || {
                    let (store, staged, bytes) = (store.clone(), staged.clone(), bytes.clone());
                    async move {
                        store.store.put(&staged, bytes.into()).await?;
                        Ok(())
                    }
                })
                .await;
                Some(format!(
                    "_weir/state/{}.bin",
                    staging.rsplit('/').next().unwrap_or("state")
                ))
            }
            None => None,
        };
        crash::point("commit.after_files");

        let mut record = CommitRecord {
            format: CommitRecord::FORMAT,
            epoch: last_epoch + 1,
            host: host.clone(),
            committed_at_ms: now_ms(),
            sequences,
            tables,
            staging,
            state: state_path,
            state_full,
            chain,
            dropped,
            quarantined,
            replaces: Vec::new(),
            replay: None,
            replaced_dropped: BTreeMap::new(),
            replaced_quarantined: BTreeMap::new(),
            gold_columns: gold_types
                .iter()
                .map(|(table, columns)| {
                    let columns = columns
                        .iter()
                        .map(|(c, t)| (c.clone(), type_name(t).to_string()))
                        .collect();
                    (table.clone(), columns)
                })
                .collect(),
            ticks,
            event_clock,
            adopted_by: adopting.as_ref().map(|a| a.by.clone()),
            inherited_from,
            folded: None,
        };
        let stepped =
            match create_record(&store, &mut record, fence.as_ref(), adopting.as_ref()).await {
                Ok(stepped) => stepped,
                Err(e) => {
                    if adopting.is_some() {
                        for location in &staged {
                            let _ = store.delete_if_present(location).await;
                        }
                    }
                    return Err(e);
                }
            };
        let SteppedOver {
            others,
            other_bases,
            other_gold_columns,
            others_wrote,
        } = stepped;
        crash::point("commit.after_record");

        publish(&store, &record, upload_concurrency, &Default::default()).await?;
        crash::point("commit.after_publish");

        // A checkpoint passes the records before it: first, what other hosts left staged goes into place.
        let mut checkpointed = false;
        if let Some(mut checkpoint) = checkpoint
            && publish_stranded(&store, &record.staging, upload_concurrency)
                .await
                .inspect_err(|e| {
                    tracing::warn!("not writing the log's checkpoint this time: {e:#}")
                })
                .is_ok()
        {
            note_committed(
                &mut checkpoint.sequences,
                &mut checkpoint.bases,
                &record,
                &others,
                &other_bases,
            );
            log::merge_gold_columns(&mut checkpoint.gold_columns, &other_gold_columns);
            log::merge_gold_columns(&mut checkpoint.gold_columns, &record.gold_columns);
            checkpoint.epoch = record.epoch;
            retry("writing the log checkpoint", || {
                log::checkpoint(&store, &checkpoint)
            })
            .await;
            checkpointed = true;
        }
        Ok(Committed {
            record,
            others,
            other_bases,
            other_gold_columns,
            checkpointed,
            others_wrote,
        })
    }
}

impl Epoch {
    /// Records that these plugin versions produced data in this epoch (lineage in the commit record).
    pub fn note_chain(&mut self, chain: &[String]) {
        for label in chain {
            if !self.chain.contains(label) {
                self.chain.push(label.clone());
            }
        }
    }

    /// Marks stream sequences as consumed by this epoch (every message, whatever became of it).
    pub fn consume(&mut self, seqs: impl IntoIterator<Item = u64>) {
        for s in seqs {
            self.sequences.insert(s, s);
            self.events += 1;
        }
    }

    /// Records where event time has got to (see `Processor::tick`), for a restart to carry on from.
    pub fn note_event_clock(&mut self, clock: EventClock) {
        self.event_clock = Some(clock);
    }

    /// Marks ticks (messages that are not events, with their times: see `Processor::tick`) as consumed by
    /// this epoch.
    pub fn consume_ticks(&mut self, ticks: &[(u64, i64)]) {
        for &(seq, _) in ticks {
            self.sequences.insert(seq, seq);
        }
        self.ticks.extend_from_slice(ticks);
    }

    pub fn sequences(&self) -> &Ranges {
        &self.sequences
    }

    /// How long the epoch has been open.
    pub fn age(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn add_bronze(&mut self, rows: &[Received]) -> Result<()> {
        for (partition, group) in rows::by_partition(rows.iter(), |r| r.ingest_ms) {
            let batch = rows::bronze_batch(&group);
            self.files.append(
                "bronze",
                &partition,
                &batch,
                seq_range(group.iter().map(|r| r.seq)),
            )?;
        }
        Ok(())
    }

    pub fn add_silver(
        &mut self,
        events: &[&crate::event::Event],
        columns: &SilverColumns,
        chain: &str,
        mismatches: &Mismatches,
    ) -> Result<()> {
        for (partition, group) in rows::by_partition(events.iter().copied(), |e| e.time_ms) {
            let batch = columns.batch(&group, chain, mismatches);
            self.files.append(
                "silver",
                &partition,
                &batch,
                seq_range(group.iter().map(|e| e.seq)),
            )?;
        }
        Ok(())
    }

    pub fn add_quarantine(&mut self, rows: &[QuarantineRow]) -> Result<()> {
        for r in rows {
            // Whole reasons: a replay in place subtracts its range's counts under the same keys.
            *self.quarantined.entry(r.reason.clone()).or_default() += 1;
        }
        let mut by_layer: BTreeMap<Layer, Vec<&QuarantineRow>> = BTreeMap::new();
        for r in rows {
            by_layer.entry(r.layer).or_default().push(r);
        }
        for (layer, rows) in by_layer {
            for (partition, group) in
                rows::by_partition(rows.iter().copied(), |r| r.event_ms.unwrap_or(r.at_ms))
            {
                let batch = rows::quarantine_batch(&group);
                self.files.append(
                    layer.quarantine_table(),
                    &partition,
                    &batch,
                    seq_range(group.iter().map(|r| r.seq)),
                )?;
            }
        }
        Ok(())
    }

    pub fn add_drops(&mut self, rows: &[DropRow]) -> Result<()> {
        for r in rows {
            *self
                .dropped
                .entry(format!("{}/{}", r.stage, r.rule))
                .or_default() += 1;
        }
        for (partition, group) in rows::by_partition(rows.iter(), |r| r.event_ms) {
            let batch = rows::drops_batch(&group);
            self.files.append(
                "drops",
                &partition,
                &batch,
                seq_range(group.iter().map(|r| r.seq)),
            )?;
        }
        Ok(())
    }

    /// Gold rows; `seqs` is the range of the epoch's sequences so far (rows come from windows, not events).
    pub fn add_gold(&mut self, rows: &[GoldRow]) -> Result<()> {
        let seqs = match (self.sequences.max(), self.gold_seqs) {
            (None, Some(seqs)) => seqs,
            _ => (
                self.sequences.0.first().map_or(0, |r| r.0),
                self.sequences.max().unwrap_or(0),
            ),
        };
        let mut by_table: BTreeMap<&str, Vec<&GoldRow>> = BTreeMap::new();
        for r in rows {
            by_table.entry(r.table.as_str()).or_default().push(r);
        }
        for (table, rows) in by_table {
            let name = schema::gold_table(table);
            // Column types: the table's known ones, extended by any new column (in first-seen order).
            let types = self.gold_types.entry(name.clone()).or_default();
            for row in &rows {
                for (column, _) in &row.columns {
                    if !types.iter().any(|(c, _)| c == column) {
                        let values: Vec<&crate::runtime::types::Value> = rows
                            .iter()
                            .filter_map(|r| {
                                r.columns.iter().find(|(c, _)| c == column).map(|(_, v)| v)
                            })
                            .collect();
                        if let Some(ty) = rows::gold_type(column, &values) {
                            types.push((column.clone(), ty));
                        }
                    }
                }
            }
            let types = types.clone();
            let start = |r: &&GoldRow| match r.columns.iter().find(|(c, _)| c == "window_start") {
                Some((_, crate::runtime::types::Value::Integer(ms))) => *ms,
                _ => 0,
            };
            for (partition, group) in rows::by_partition(rows.iter(), start) {
                let group: Vec<&GoldRow> = group.into_iter().copied().collect();
                let batch = rows::gold_batch(&group, &types);
                self.files.append(&name, &partition, &batch, seqs)?;
            }
        }
        Ok(())
    }
}

/// Where commits stage their files, a directory per epoch (see [`staging_dir`]).
const STAGING: &str = "_weir/staging";

/// Every file in the staging area, with the name of the directory it is in (`<host>-<first sequence>`,
/// `compact`, `replay-<name>`).
async fn staged_files(store: &Store) -> Result<Vec<(String, object_store::path::Path)>> {
    let dir = store.path(STAGING);
    let inside = format!("{}/", dir.as_ref());
    let listed: Vec<object_store::path::Path> = store
        .store
        .list(Some(&dir))
        .map_ok(|m| m.location)
        .try_collect()
        .await
        .context("cannot list the lake's staging area")?;
    Ok(listed
        .into_iter()
        .filter_map(|location| {
            let name = location.as_ref().strip_prefix(&inside)?.split('/').next()?;
            Some((name.to_string(), location))
        })
        .collect())
}

/// How long a committed epoch's files may stay staged before another host moves them into place: their
/// own host does so within seconds of its record, unless it stopped in between.
const STRANDED_AFTER_MS: i64 = 60_000;

/// Moves into place the files of committed epochs (of any host but this commit's, `own_staging`) still
/// staged a minute after their record: their host stopped between its record and the move, and may never
/// come back under its name (a scaled-down StatefulSet, a new hostname) to finish it at its start; or a
/// compaction run stopped there, which only the next run would finish (readers find neither its merged files
/// nor the files they replace meanwhile). Run before a checkpoint passes their records, after which only a
/// read of the whole log finds them.
async fn publish_stranded(store: &Store, own_staging: &str, concurrency: usize) -> Result<()> {
    // Files, not directories: a moved epoch's directory stays behind, empty, on local disk, and a compaction
    // run's staging keeps its marker until the run is done.
    let own = format!("{own_staging}/");
    let staged: std::collections::BTreeSet<String> = staged_files(store)
        .await?
        .into_iter()
        .map(|(_, location)| store.relative(&location))
        .filter(|path| !path.starts_with(&own))
        .collect();
    if staged.is_empty() {
        return Ok(());
    }
    let holds_staged =
        |record: &CommitRecord| moves(record).any(|(from, _)| staged.contains(&from));
    let log = retry_log("reading the commit log", || log::read(store)).await?;
    let replaced = log::replaced_paths(&log.records);
    let now = now_ms();
    let mut moving = None;
    for record in log.records.iter().filter(|r| holds_staged(r)) {
        if now - record.committed_at_ms > STRANDED_AFTER_MS {
            tracing::warn!(
                epoch = record.epoch,
                host = %record.host,
                "moving the files of a committed epoch into place: the host or compaction run that wrote it \
                 stopped after its commit record"
            );
            republish(store, record, concurrency, &replaced).await?;
        } else {
            moving = Some(record);
        }
    }
    // One still being moved by its host, or stranded by it moments ago: a checkpoint now would pass its
    // record, and no one would find its files again if its host does not come back.
    if let Some(record) = moving {
        anyhow::bail!(
            "epoch {} of host {} is committed and its files are still staged: waiting for them to be in \
             place (its host moves them, or another host does after {} s)",
            record.epoch,
            record.host,
            STRANDED_AFTER_MS / 1000
        );
    }
    Ok(())
}

/// Whether a record after `epoch` replaced the file at `location` (a full store path): a compaction or a
/// replay in place committed after the caller read the log.
async fn replaced_since(store: &Store, epoch: u64, location: &str) -> Result<bool> {
    let later = log::records_after(store, epoch).await?;
    Ok(later
        .iter()
        .flat_map(|r| r.replaces.iter())
        .any(|path| store.path(path).as_ref() == location))
}

/// Whether a move tried again only had its delete left, which it then does. On an object store a move is a
/// copy, then a delete; after a failed attempt (this run's, or a crashed run's) the copy may be in place
/// already, and a compaction committed since may have merged it away: copied again, it would come back
/// beside the merged file (its rows twice). So the staged copy is deleted when the file is in place or
/// replaced since (the record of `epoch` wrote it), and the move goes on only when neither.
async fn finished_copy(
    store: &Store,
    from: &object_store::path::Path,
    to: &object_store::path::Path,
    epoch: u64,
) -> Result<bool> {
    let present = |found: object_store::Result<object_store::ObjectMeta>| match found {
        Ok(_) => Ok(true),
        Err(object_store::Error::NotFound { .. }) => Ok(false),
        Err(e) => Err(anyhow::Error::from(e)),
    };
    if !present(store.store.head(from).await)? {
        return Ok(false);
    }
    if !present(store.store.head(to).await)? && !replaced_since(store, epoch, to.as_ref()).await? {
        return Ok(false);
    }
    store.delete_if_present(from).await?;
    Ok(true)
}

/// Finishes a committed record (idempotent, so anyone may redo it after a crash): moves its files from
/// staging to their tables, then deletes the files it replaces (a replay in place), so that readers of the
/// directories alone (DuckDB, pyarrow) see what the log says. Files in `replaced` (by a later record) are
/// left alone. For the commit that wrote the record; see [`republish`] for anyone else.
pub(crate) async fn publish(
    store: &Store,
    record: &CommitRecord,
    concurrency: usize,
    replaced: &std::collections::BTreeSet<&str>,
) -> Result<()> {
    publish_moves(store, record, concurrency, replaced, false).await
}

/// [`publish`] of a record another run wrote (recovery after a crash, a stranded epoch), which may have
/// copied some files into place and not deleted their staged copies: those are only deleted (see
/// `publish_moves`).
pub(crate) async fn republish(
    store: &Store,
    record: &CommitRecord,
    concurrency: usize,
    replaced: &std::collections::BTreeSet<&str>,
) -> Result<()> {
    publish_moves(store, record, concurrency, replaced, true).await
}

/// What publishing `record` moves, `(from, to)`: its files and its state, from its staging to their paths.
fn moves(record: &CommitRecord) -> impl Iterator<Item = (String, String)> + '_ {
    let files = record.files().map(|f| f.path.clone());
    files.map(|path| (record.staged(&path), path)).chain(
        record
            .state
            .iter()
            .map(|state| (record.staged("state.bin"), state.clone())),
    )
}

async fn publish_moves(
    store: &Store,
    record: &CommitRecord,
    concurrency: usize,
    replaced: &std::collections::BTreeSet<&str>,
    recovering: bool,
) -> Result<()> {
    let moves: Vec<(String, String)> = moves(record)
        .filter(|(_, to)| !replaced.contains(to.as_str()))
        .collect();
    let epoch = record.epoch;
    futures::stream::iter(moves)
        .map(|(from, to)| {
            let store = store.clone();
            async move {
                let (from, to) = (store.path(&from), store.path(&to));
                let attempts = std::sync::atomic::AtomicU32::new(0);
                retry(&format!("moving {from} to {to}"), || {
                    let (store, from, to) = (store.clone(), from.clone(), to.clone());
                    let again = recovering
                        || attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed) > 0;
                    async move {
                        if again && finished_copy(&store, &from, &to, epoch).await? {
                            return Ok(());
                        }
                        match store.store.rename(&from, &to).await {
                            Ok(()) => Ok(()),
                            // Already moved (an earlier attempt, or another host's recovery).
                            Err(object_store::Error::NotFound { .. }) => match store.store.head(&to).await {
                                Ok(_) => Ok(()),
                                // Moved, then merged away by a compaction committed since the log was read.
                                Err(object_store::Error::NotFound { .. })
                                    if replaced_since(&store, epoch, to.as_ref()).await? =>
                                {
                                    Ok(())
                                }
                                Err(object_store::Error::NotFound { .. }) => Err(anyhow::anyhow!(
                                    "{to} is missing and its staged copy {from} too: the lake lost a committed file \
                                     (run `weir lake verify`)"
                                )),
                                Err(e) => Err(e.into()),
                            },
                            Err(e) => Err(e.into()),
                        }
                    }
                })
                .await;
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect::<Vec<()>>()
        .await;
    if !record.replaces.is_empty() {
        crash::point("replace.after_moves");
    }
    // Owned paths and store handles, so the future is `Send` for any caller (a spawned compaction too).
    let deletes: Vec<object_store::path::Path> =
        record.replaces.iter().map(|p| store.path(p)).collect();
    futures::stream::iter(deletes)
        .map(|location| {
            let store = store.clone();
            async move {
                retry(&format!("deleting the replaced file {location}"), || {
                    let (store, location) = (store.clone(), location.clone());
                    async move { Ok(store.delete_if_present(&location).await?) }
                })
                .await
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect::<Vec<()>>()
        .await;
    Ok(())
}

fn type_name(ty: &DataType) -> &'static str {
    match ty {
        DataType::Timestamp(..) => "timestamp",
        DataType::Int64 => "int64",
        DataType::Float64 => "float64",
        DataType::Boolean => "bool",
        _ => "string",
    }
}

fn type_from_name(name: &str) -> DataType {
    match name {
        "timestamp" => schema::timestamp(),
        "int64" => DataType::Int64,
        "float64" => DataType::Float64,
        "bool" => DataType::Boolean,
        _ => DataType::Utf8,
    }
}

fn seq_range(seqs: impl Iterator<Item = u64>) -> (u64, u64) {
    seqs.fold((u64::MAX, 0), |(lo, hi), s| (lo.min(s), hi.max(s)))
}

#[cfg(test)]
mod tests {
    use super::testing::{block_on, local_lake};
    use super::*;

    /// Host `edge`'s epoch 1, staged in `staging`, with one silver file.
    fn first_record(staging: &str, file: &str) -> CommitRecord {
        CommitRecord {
            format: CommitRecord::FORMAT,
            epoch: 1,
            host: "edge".into(),
            staging: staging.into(),
            tables: [(
                "silver".to_string(),
                vec![log::FileEntry {
                    path: file.into(),
                    rows: 1,
                    bytes: 1,
                    min_seq: 1,
                    max_seq: 1,
                }],
            )]
            .into(),
            ..CommitRecord::default()
        }
    }

    /// A compaction run that stopped after its record left the merged file staged: readers find neither it
    /// nor the file it replaces. The next checkpoint's look for stranded epochs finishes it (moves the merged
    /// file in, deletes the replaced one) rather than leaving it to the next compaction run.
    #[test]
    fn a_compaction_stopped_after_its_record_is_finished_before_a_checkpoint() {
        let (_dir, config) = local_lake();
        block_on(async {
            let store = Store::open(&config.store()).unwrap();
            let put = |path: &str| {
                let (store, path) = (store.clone(), store.path(path));
                async move {
                    store
                        .store
                        .put(&path, Bytes::from_static(b"x").into())
                        .await
                        .unwrap()
                }
            };
            let original = "silver/dt=2026-01-01/hour=00/a.parquet";
            let merged = "silver/dt=2026-01-01/hour=00/merged.parquet";
            let staging = "_weir/staging/compact/run-1";
            let long_ago = now_ms() - 2 * STRANDED_AFTER_MS;
            let first = CommitRecord {
                committed_at_ms: long_ago,
                ..first_record("_weir/staging/edge-1", original)
            };
            put(original).await;
            assert!(matches!(
                log::create(&store, &first).await.unwrap(),
                log::CreateOutcome::Created
            ));
            let compaction = CommitRecord {
                epoch: 2,
                host: "compactor".into(),
                replaces: vec![original.into()],
                committed_at_ms: long_ago,
                ..first_record(staging, merged)
            };
            put(&format!("{staging}/{merged}")).await;
            put(&format!("{staging}/_unfinished")).await;
            assert!(matches!(
                log::create(&store, &compaction).await.unwrap(),
                log::CreateOutcome::Created
            ));

            publish_stranded(&store, "_weir/staging/edge-2", 4)
                .await
                .unwrap();
            let exists = |path: &str| {
                let (store, path) = (store.clone(), store.path(path));
                async move { store.store.head(&path).await.is_ok() }
            };
            assert!(exists(merged).await, "the merged file is in place");
            assert!(!exists(original).await, "the file it replaces is gone");
            assert!(!exists(&format!("{staging}/{merged}")).await);
            // Nothing of it is left staged but the marker, which the next compaction run clears: a second
            // look moves nothing again.
            publish_stranded(&store, "_weir/staging/edge-2", 4)
                .await
                .unwrap();
        });
    }

    /// A message redelivered to a second host while the first still held it in its open epoch: once the
    /// first host has learned of the second's commit (its own commit stepped over it), it refuses to
    /// commit the message again.
    #[test]
    fn an_epoch_holding_what_another_host_committed_is_refused() {
        let (_dir, config) = local_lake();
        block_on(async {
            let mut a = Lake::open(config.clone(), "host-a", false).await.unwrap();
            let mut b = Lake::open(config.clone(), "host-b", false).await.unwrap();
            let epoch = |lake: &Lake, seqs: &[u64]| {
                let mut epoch = lake.begin(Vec::new());
                epoch.consume(seqs.iter().copied());
                epoch
            };
            let held = epoch(&a, &[5]);
            b.commit(epoch(&b, &[5, 6]), None, false).await.unwrap();
            a.commit(epoch(&a, &[1, 2]), None, false).await.unwrap();
            assert!(a.is_committed(5), "host-a's commit stepped over host-b's");
            let refused = a.start_commit(held, None, false).err().unwrap();
            assert!(
                refused.to_string().contains("another host has committed"),
                "{refused}"
            );
            // An epoch of what no host committed goes ahead.
            a.commit(epoch(&a, &[7]), None, false).await.unwrap();
        });
    }

    /// Host `edge`'s epoch 1 (sequence 1, committed at `committed_at_ms`) with its one file still staged:
    /// the record, the file's path, and where it is staged.
    async fn left_staged(
        store: &Store,
        committed_at_ms: i64,
    ) -> (CommitRecord, &'static str, object_store::path::Path) {
        let staging = "_weir/staging/edge-00000000000000000001";
        let file = "silver/dt=2026-12-05/hour=12/1-1.parquet";
        let left = store.path(&format!("{staging}/{file}"));
        store
            .store
            .put(&left, Bytes::from_static(b"x").into())
            .await
            .unwrap();
        let record = CommitRecord {
            sequences: Ranges(vec![(1, 1)]),
            committed_at_ms,
            ..first_record(staging, file)
        };
        log::create(store, &record).await.unwrap();
        (record, file, left)
    }

    /// A host that stopped between its commit record and moving the files into place, and never came
    /// back: the next checkpoint another host writes moves them first.
    #[test]
    fn a_checkpoint_moves_files_another_host_left_staged() {
        let (_dir, mut config) = local_lake();
        config.checkpoint_every = 1;
        block_on(async {
            let store = Store::open(&config.store()).unwrap();
            // Open first: a host's start moves what the records since the checkpoint staged.
            let mut other = Lake::open(config.clone(), "other", false).await.unwrap();
            let (_, file, left) = left_staged(&store, 0).await;

            let mut epoch = other.begin(Vec::new());
            epoch.consume([2]);
            other.commit(epoch, None, false).await.unwrap();
            let moved = store.store.get(&store.path(file)).await.unwrap();
            assert_eq!(moved.bytes().await.unwrap(), Bytes::from_static(b"x"));
            assert!(store.store.head(&left).await.is_err(), "still staged");
            let checkpoint = log::read(&store).await.unwrap().checkpoint;
            assert_eq!(checkpoint.epoch, 2, "the checkpoint was written");
        });
    }

    /// A checkpoint due while another host's committed epoch is still staged, moments after its record (its
    /// host may be moving the files, or may have stopped just then), is put off: written then, it would pass
    /// that record, and no later checkpoint would find the files. The next commit writes it.
    #[test]
    fn a_checkpoint_waits_for_files_another_host_just_committed() {
        let (_dir, mut config) = local_lake();
        config.checkpoint_every = 1;
        block_on(async {
            let store = Store::open(&config.store()).unwrap();
            let mut other = Lake::open(config.clone(), "other", false).await.unwrap();
            let (record, _, left) = left_staged(&store, now_ms()).await;
            let commit = |other: &mut Lake, seq: u64| {
                let mut epoch = other.begin(Vec::new());
                epoch.consume([seq]);
                epoch
            };
            let epoch = commit(&mut other, 2);
            other.commit(epoch, None, false).await.unwrap();
            assert_eq!(
                log::read(&store).await.unwrap().checkpoint.epoch,
                0,
                "put off"
            );
            assert!(store.store.head(&left).await.is_ok(), "left to its host");
            // Its host moves them; the next commit writes the checkpoint.
            publish(&store, &record, 1, &Default::default())
                .await
                .unwrap();
            let epoch = commit(&mut other, 3);
            other.commit(epoch, None, false).await.unwrap();
            assert_eq!(log::read(&store).await.unwrap().checkpoint.epoch, 3);
        });
    }

    /// A checkpoint keeps the gold column types other hosts' records name, not only the writer's: the
    /// records it passes are no longer read at start, and a column that starts out null on a restarted host
    /// would lose its type.
    #[test]
    fn a_checkpoint_keeps_the_gold_columns_of_other_hosts() {
        use crate::runtime::bindings::types::Value;
        let (_dir, mut config) = local_lake();
        config.checkpoint_every = 1;
        block_on(async {
            let mut a = Lake::open(config.clone(), "host-a", false).await.unwrap();
            let mut b = Lake::open(config.clone(), "host-b", false).await.unwrap();
            let mut epoch = b.begin(Vec::new());
            epoch.consume([1]);
            epoch
                .add_gold(&[GoldRow {
                    table: "edits".into(),
                    plugin: "count@1.0.0".into(),
                    columns: vec![
                        ("window_start".into(), Value::Integer(0)),
                        ("edits".into(), Value::Integer(3)),
                    ],
                }])
                .unwrap();
            b.commit(epoch, None, false).await.unwrap();
            // host-a's commit steps over host-b's epoch, and writes the checkpoint past it.
            let mut epoch = a.begin(Vec::new());
            epoch.consume([2]);
            a.commit(epoch, None, false).await.unwrap();
            let checkpoint = log::read(&a.store).await.unwrap().checkpoint;
            assert_eq!(checkpoint.epoch, 2, "host-a wrote the checkpoint");
            let columns = &checkpoint.gold_columns[&schema::gold_table("edits")];
            assert!(
                columns.contains(&("edits".to_string(), "int64".to_string())),
                "{columns:?}"
            );
            // So does a later checkpoint of a host that learned of the column by reading the log.
            let mut c = Lake::open(config.clone(), "host-c", false).await.unwrap();
            let mut epoch = c.begin(Vec::new());
            epoch.consume([3]);
            c.commit(epoch, None, false).await.unwrap();
            let checkpoint = log::read(&c.store).await.unwrap().checkpoint;
            assert_eq!(checkpoint.epoch, 3);
            assert!(
                checkpoint
                    .gold_columns
                    .contains_key(&schema::gold_table("edits"))
            );
        });
    }

    /// A host that read the log before a compaction replaced a file publishes the record that wrote it
    /// again (as at open): the file and its staged copy are both gone, which is no loss.
    #[test]
    fn publishing_again_passes_over_a_file_a_later_record_replaced() {
        let (_dir, config) = local_lake();
        block_on(async {
            let store = Store::open(&config.store()).unwrap();
            let file = "silver/dt=2026-12-05/hour=12/1-1.parquet";
            let wrote = first_record("_weir/staging/edge-00000000000000000001", file);
            let compacted = CommitRecord {
                epoch: 2,
                replaces: vec![file.into()],
                ..wrote.clone()
            };
            log::create(&store, &wrote).await.unwrap();
            log::create(&store, &compacted).await.unwrap();
            let none_replaced = Default::default();
            let again = publish(&store, &wrote, 4, &none_replaced);
            tokio::time::timeout(Duration::from_secs(20), again)
                .await
                .expect("publishing again waited for a file a compaction removed")
                .unwrap();
        });
    }

    /// A move on an object store is a copy, then a delete. A run that copied a file into place and stopped
    /// before deleting the staged copy, then a compaction that merged the file away: a later publish of the
    /// record deletes the staged copy instead of bringing the file back beside the merged one.
    #[test]
    fn publishing_again_never_copies_back_a_file_a_later_record_replaced() {
        let (dir, config) = local_lake();
        block_on(async {
            let store = Store::open(&config.store()).unwrap();
            let file = "silver/dt=2026-12-05/hour=12/1-1.parquet";
            let staging = "_weir/staging/edge-00000000000000000001";
            let wrote = first_record(staging, file);
            let compacted = CommitRecord {
                epoch: 2,
                replaces: vec![file.into()],
                ..wrote.clone()
            };
            log::create(&store, &wrote).await.unwrap();
            // Copied into place, not deleted from staging; then merged away by the compaction.
            let staged = store.path(&format!("{staging}/{file}"));
            store
                .store
                .put(&staged, Bytes::from_static(b"rows").into())
                .await
                .unwrap();
            log::create(&store, &compacted).await.unwrap();
            republish(&store, &wrote, 4, &Default::default())
                .await
                .unwrap();
            assert!(!dir.path().join(file).exists(), "the merged file came back");
            assert!(!dir.path().join(staging).join(file).exists());
        });
    }

    /// A commit whose fence no longer holds (an exclusive reader's lease not renewed in time) writes no
    /// record, and counts nothing.
    #[test]
    fn a_commit_past_its_fence_writes_no_record() {
        let (_dir, config) = local_lake();
        block_on(async {
            let mut lake = Lake::open(config.clone(), "edge", true).await.unwrap();
            let mut epoch = lake.begin(Vec::new());
            epoch.consume([1, 2]);
            let refused = lake
                .start_commit(epoch, None, false)
                .unwrap()
                .fenced_by(Arc::new(|| None))
                .run()
                .await
                .err()
                .unwrap();
            assert!(format!("{refused:#}").contains("lease"), "{refused:#}");
            let log = log::read(lake.store()).await.unwrap();
            assert_eq!(log.last_epoch, 0, "a record was written");
        });
    }

    #[test]
    fn ranges_overlap_in_one_walk() {
        let ranges = |pairs: &[(u64, u64)]| {
            let mut r = Ranges::default();
            for &(a, b) in pairs {
                r.insert(a, b);
            }
            r
        };
        let log = ranges(&[(1, 3), (10, 20), (30, 30)]);
        for (other, overlaps) in [
            (ranges(&[(4, 9)]), false),
            (ranges(&[(4, 9), (21, 29), (31, 40)]), false),
            (ranges(&[(4, 10)]), true),
            (ranges(&[(0, 1)]), true),
            (ranges(&[(21, 29), (30, 31)]), true),
            (ranges(&[(15, 15)]), true),
            (ranges(&[(0, 100)]), true),
            (Ranges::default(), false),
        ] {
            assert_eq!(log.overlaps(&other), overlaps, "{other:?}");
            assert_eq!(other.overlaps(&log), overlaps, "{other:?}");
        }
    }

    /// Opening the lake as host `edge` removes its own uncommitted staging, leaves the staging of host
    /// `edge-2` alone, and moves into place the files of a committed epoch that a checkpoint passed before
    /// they were moved.
    #[test]
    fn staging_is_cleaned_by_whole_host_name_and_committed_files_are_kept() {
        let (_dir, config) = local_lake();
        block_on(async {
            let store = Store::open(&config.store()).unwrap();
            let committed = "_weir/staging/edge-00000000000000000001";
            let file = "silver/dt=2026-12-05/hour=12/1-1.parquet";
            for path in [
                format!("{committed}/{file}"),
                "_weir/staging/edge-00000000000000000007/silver/x.parquet".into(),
                "_weir/staging/edge-2-00000000000000000007/silver/x.parquet".into(),
            ] {
                store
                    .store
                    .put(&store.path(&path), Bytes::from_static(b"x").into())
                    .await
                    .unwrap();
            }
            let mut sequences = Ranges::default();
            sequences.insert(1, 1);
            let record = CommitRecord {
                sequences: sequences.clone(),
                ..first_record(committed, file)
            };
            log::create(&store, &record).await.unwrap();
            log::checkpoint(
                &store,
                &log::Checkpoint {
                    epoch: 1,
                    sequences,
                    ..Default::default()
                },
            )
            .await
            .unwrap();

            Lake::open(config.clone(), "edge", false).await.unwrap();
            let mut left: Vec<String> = store
                .store
                .list(None)
                .map_ok(|m| m.location.to_string())
                .try_collect()
                .await
                .unwrap();
            left.sort();
            assert_eq!(
                left,
                [
                    "_weir/log/00000000000000000001.json",
                    "_weir/log/checkpoint.json",
                    "_weir/staging/edge-2-00000000000000000007/silver/x.parquet",
                    file,
                ]
            );
        });
    }

    /// Where event time had got to comes back with the plugin state: from the restored host's last commit
    /// that noted it (a later one without, from an older binary or before any event had a time, does not
    /// erase it), to that host and to the exclusive reader that carries its state on; to no other.
    #[test]
    fn the_event_clock_comes_back_with_the_state() {
        let (_dir, config) = local_lake();
        block_on(async {
            let store = Store::open(&config.store()).unwrap();
            store
                .store
                .put(
                    &store.path("_weir/state/1"),
                    Bytes::from_static(b"{}").into(),
                )
                .await
                .unwrap();
            let clock = |event_ms| EventClock {
                event_ms,
                ingest_ms: event_ms + 5,
            };
            for (epoch, state, event_clock) in [
                (1, Some("_weir/state/1".to_string()), Some(clock(10))),
                (2, None, Some(clock(20))),
                (3, None, None),
            ] {
                let mut sequences = Ranges::default();
                sequences.insert(epoch, epoch);
                let record = CommitRecord {
                    format: CommitRecord::FORMAT,
                    epoch,
                    host: "edge".into(),
                    sequences,
                    state_full: state.is_some(),
                    state,
                    event_clock,
                    ..CommitRecord::default()
                };
                log::create(&store, &record).await.unwrap();
            }
            let open = |host: &'static str, sole: bool| {
                let config = config.clone();
                async move { Lake::open(config, host, sole).await.unwrap().event_clock() }
            };
            assert_eq!(open("edge", false).await, Some(clock(20)));
            assert_eq!(open("heir", true).await, Some(clock(20)));
            assert_eq!(open("other", false).await, None);
        });
    }
}
