//! `weir run`: the stream, the plugins and the lake as one service.
//!
//! ```text
//!  [source] ──ingest──▶ JetStream ──fetch task──▶ micro-batches ──processor thread──▶ epoch ──commit──▶ acks
//!                                  (durable pull,    (bounded      parse once, chain,     Parquet   (after the
//!                                   explicit acks)    channel)     watermarks, Arrow)     (lake)    commit only)
//! ```
//!
//! - The fetch task pulls messages and hands micro-batches to the processor through a bounded channel:
//!   a slow processor or store slows fetching, and the consumer's `max_ack_pending` bounds what the server
//!   delivers, so memory stays bounded. Batches waiting there keep their messages (see
//!   [`super::handover`]).
//! - The processor thread owns the chain and the epoch being written. It skips redeliveries of committed
//!   messages (acking them) and of messages in the open or the committing epoch, sends poison messages
//!   (delivered `max_deliver - 1` times) to quarantine, and commits by size or time. Acks go out only after
//!   the commit.
//! - A commit runs in a task while the processor fills the next epoch (a store far away would otherwise hold
//!   the pipeline for every upload); the next commit waits for it. During a commit, progress acks keep the
//!   epoch's messages from being redelivered however long the store takes; an unreachable store is retried
//!   until it comes back.
//! - Hot swaps and rollbacks are applied between batches.
//! - With `consumer.mode = "exclusive"` the fetch task reads through an ordered consumer of its own instead,
//!   from the first sequence the lake's commit log does not hold, and nothing is acked: the commit log is the
//!   cursor (see [`crate::config::ConsumerMode`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use async_nats::jetstream::{self, consumer::pull};
use bytes::Bytes;
use futures::StreamExt;

use super::chain::{Chain, ChainOutput};
use super::cluster::Herald;
use super::self_test::{Sample, SelfTest, StageSpec};
use super::shared::{Control, Phase, PluginInfo, Recent, Shared};
use crate::bus::{self, headers};
use crate::config::Config;
use crate::event::{EventShape, JsonPath};
use crate::lake::rows::{DropRow, GoldRow, QuarantineRow, Received, SilverColumns};
use crate::lake::schema::gold_table;
use crate::lake::{Epoch, Lake, Layer, crash};
use crate::runtime::{Clock, LoadedPlugin, Loader, Plugin};

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The headers the processor reads from a message, found in one pass over them. Looked up one by one, each
/// of five names was hashed (SipHash, in async-nats's map) for every message: 2 % of the pipeline thread.
#[derive(Default)]
struct Known<'a> {
    ingest_ms: Option<&'a str>,
    /// `Nats-Msg-Id`; `Weir-Source-Id` in a replay from bronze (the live event's id, kept by the replay).
    source_id: Option<&'a str>,
    rejected: Option<&'a str>,
    rejected_detail: Option<&'a str>,
    invalid_utf8: bool,
    sse_id: Option<&'a str>,
    tick_ms: Option<&'a str>,
}

impl<'a> Known<'a> {
    fn of(headers: Option<&'a async_nats::HeaderMap>, from_bronze: bool) -> Self {
        let source_id = if from_bronze {
            headers::SOURCE_ID
        } else {
            async_nats::header::NATS_MESSAGE_ID.as_ref()
        };
        let mut known = Known::default();
        for (name, values) in headers.into_iter().flat_map(|h| h.iter()) {
            // The first value of a name, as `HeaderMap::get` gives it.
            let value = values.first().map(|v| v.as_str());
            match name.as_ref() {
                name if name == source_id => known.source_id = value,
                headers::INGEST_MS => known.ingest_ms = value,
                headers::REJECTED => known.rejected = value,
                headers::REJECTED_DETAIL => known.rejected_detail = value,
                headers::INVALID_UTF8 => known.invalid_utf8 = value.is_some(),
                headers::SSE_ID => known.sse_id = value,
                headers::TICK_MS => known.tick_ms = value,
                _ => {}
            }
        }
        known
    }
}

/// A commit running in a task while the processor fills the next epoch.
struct PendingCommit {
    task: tokio::task::JoinHandle<Result<crate::lake::Committed>>,
    /// Its messages: a redelivery of one is in flight, not new.
    sequences: crate::lake::Ranges,
    events: u64,
    /// The recent gold rows numbered below this are in its epoch (see `Recent::gold_commit_started`).
    gold_through: u64,
}

/// Progress acks for the open epoch's messages, sent until dropped (see
/// [`Processor::extend_open_epoch_meanwhile`]).
pub(super) struct Extending(tokio::task::JoinHandle<()>);

impl Drop for Extending {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What a deploy's caller hears when a later deploy or a rollback of its stage came first.
pub const SUPERSEDED: &str = "was not deployed: a later deploy of its stage, or a rollback asked for, was \
                              applied while it was being prepared";

/// The plugins of the pipeline, by stage.
pub struct Stages {
    pub names: Vec<String>,
    pub configs: Vec<String>,
    pub limits: Vec<crate::runtime::Limits>,
    pub on_error: Vec<crate::config::OnError>,
    /// The configured plugin files (deploys note which one they replaced).
    pub configured: Vec<std::path::PathBuf>,
}

/// Starts every stage's plugin: the configured version, or the one deployed before a restart. Returns the
/// plugins, the stages, and for stages started on a deployed version the one before it (for a rollback).
/// Errors name the stage, and the file of a version deployed since.
pub fn start_plugins(
    config: &Config,
    loader: &Loader,
    clock: &Clock,
) -> Result<(Vec<Plugin>, Stages, Vec<Option<Plugin>>)> {
    let mut plugins = Vec::new();
    let mut previous = Vec::new();
    let mut stages = Stages {
        names: Vec::new(),
        configs: Vec::new(),
        limits: Vec::new(),
        on_error: Vec::new(),
        configured: Vec::new(),
    };
    let deployed = config.deployed();
    for stage in config.stages()? {
        // Errors name the configured stage, and the file when it is a version deployed since.
        let at = |path: &std::path::Path| {
            if path == stage.path {
                config.stage_at(&stage.name)
            } else {
                format!(
                    "{}, version deployed as {}",
                    config.stage_at(&stage.name),
                    path.display()
                )
            }
        };
        let start = |path: &std::path::Path| {
            let loaded = loader.load(path).with_context(|| at(path))?;
            Plugin::start(loaded, &stage.config, stage.limits.clone(), clock.clone())
                .with_context(|| at(path))
        };
        // The version deployed before a restart, unless it no longer starts (then the configured one).
        let redeployed = deployed
            .as_ref()
            .and_then(|d| d.current(&stage.name, &stage.path))
            .and_then(|path| match start(&path) {
                Ok(plugin) => Some(plugin),
                Err(e) => {
                    tracing::error!(
                        stage = %stage.name,
                        file = %path.display(),
                        "the version deployed before the restart does not start ({e:#}); running the configured one"
                    );
                    None
                }
            });
        let (plugin, before) = match redeployed {
            Some(plugin) => {
                tracing::info!(stage = %stage.name, plugin = %plugin.label(), "plugin loaded (deployed before the restart)");
                // What a rollback returns to: the deployed version before it, else the configured one.
                let before = deployed
                    .as_ref()
                    .and_then(|d| d.previous(&stage.name))
                    .unwrap_or_else(|| stage.path.clone());
                let before = start(&before)
                    .inspect_err(|e| tracing::warn!(stage = %stage.name, "no rollback after the restart: {e:#}"))
                    .ok();
                (plugin, before)
            }
            None => {
                let plugin = start(&stage.path)?;
                tracing::info!(stage = %stage.name, plugin = %plugin.label(), "plugin loaded");
                (plugin, None)
            }
        };
        plugins.push(plugin);
        previous.push(before);
        stages.names.push(stage.name);
        stages.configs.push(stage.config);
        stages.limits.push(stage.limits);
        stages.on_error.push(stage.on_error);
        stages.configured.push(stage.path);
    }
    super::chain::check_emits(stages.names.iter().map(String::as_str).zip(&plugins))
        .map_err(|e| anyhow!("{}: {e}", config.stage_at(&e.stage)))?;
    Ok((plugins, stages, previous))
}

pub fn shape(config: &Config) -> Result<EventShape> {
    let parse = |what: &str, p: &str| JsonPath::parse(p).map_err(|e| anyhow!("events.{what}: {e}"));
    Ok(EventShape {
        id: parse("id_path", &config.events.id_path)?,
        time: parse("time_path", &config.events.time_path)?,
        key: config
            .events
            .key_path
            .as_deref()
            .map(|p| parse("key_path", p))
            .transpose()?,
    })
}

/// The durable consumer the pipeline reads through (created, or updated to the configured settings).
pub async fn consumer(
    js: &jetstream::Context,
    config: &Config,
) -> Result<jetstream::consumer::Consumer<pull::Config>> {
    let stream = js
        .get_stream(&config.stream.name)
        .await
        .with_context(|| format!("stream {} does not exist", config.stream.name))?;
    let wanted = pull::Config {
        durable_name: Some(config.durable()),
        description: Some(format!("Weir pipeline {}", config.pipeline.name)),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ack_wait: config.consumer.ack_wait,
        max_deliver: config.consumer.max_deliver,
        max_ack_pending: config.consumer.max_ack_pending,
        deliver_policy: match &config.replay {
            Some(replay) => replay.deliver_policy()?,
            None => jetstream::consumer::DeliverPolicy::All,
        },
        ..Default::default()
    };
    match stream.get_consumer::<pull::Config>(&config.durable()).await {
        // An unfinished replay of the version run again from another start: its consumer would go on from
        // the old one and leave the sequences before it out. Started anew from the new start, it reads them;
        // what the version holds already is skipped as committed.
        Ok(existing)
            if config.replay.is_some()
                && existing.cached_info().config.deliver_policy != wanted.deliver_policy =>
        {
            tracing::warn!(
                "the replay's consumer {} started from {:?}; starting it again from {:?}",
                config.durable(),
                existing.cached_info().config.deliver_policy,
                wanted.deliver_policy
            );
            stream
                .delete_consumer(&config.durable())
                .await
                .context("cannot remove the replay's consumer to start it again")?;
            Ok(stream
                .create_consumer(wanted)
                .await
                .context("cannot create the durable consumer")?)
        }
        Ok(existing) => {
            let current = existing.cached_info().config.clone();
            if current.ack_wait != wanted.ack_wait
                || current.max_deliver != wanted.max_deliver
                || current.max_ack_pending != wanted.max_ack_pending
            {
                stream
                    .update_consumer(wanted)
                    .await
                    .context("cannot update the durable consumer")?;
                return stream
                    .get_consumer(&config.durable())
                    .await
                    .map_err(|e| anyhow!("cannot read the durable consumer: {e}"));
            }
            Ok(existing)
        }
        Err(_) => Ok(stream
            .create_consumer(wanted)
            .await
            .context("cannot create the durable consumer")?),
    }
}

/// This host's own reader (`consumer.mode = "exclusive"`): ordered consumers from the first sequence at
/// or after the stream's first that the lake has not committed. Committed sequences further on are skipped as
/// they come, as in shared mode.
pub async fn exclusive_reader(
    js: &jetstream::Context,
    config: &Config,
    lake: &Lake,
) -> Result<Reader> {
    let stream = js
        .get_stream(&config.stream.name)
        .await
        .with_context(|| format!("stream {} does not exist", config.stream.name))?;
    let first = stream
        .get_info()
        .await
        .context("cannot read the stream's state")?
        .state
        .first_sequence;
    let start = lake.resume_from(first);
    tracing::info!(
        start,
        "reading the stream alone (consumer.mode = \"exclusive\"), from the first sequence the lake has not \
         committed"
    );
    Ok(Reader::Exclusive {
        stream,
        description: format!("Weir pipeline {} (exclusive)", config.pipeline.name),
        start,
    })
}

/// Where the fetch task reads: the durable consumer hosts share, or this host's own ordered consumers.
#[derive(Clone)]
pub enum Reader {
    Shared(jetstream::consumer::Consumer<pull::Config>),
    Exclusive {
        stream: jetstream::stream::Stream,
        description: String,
        /// The first sequence to read.
        start: u64,
    },
}

/// A pull in progress, of either kind. Boxed: both streams are large (hundreds of bytes, of different
/// sizes), and there is only ever one.
enum Messages {
    Shared(Box<pull::Stream>),
    Exclusive {
        pull: Box<pull::Ordered>,
        /// The stream sequence of the last message taken (`start - 1` before the first).
        seen: u64,
    },
    /// Closed while the pipeline is paused ([`Messages::close`]); opened again by the next `next`.
    Closed {
        /// As `Exclusive`'s; `None` for a shared pull.
        seen: Option<u64>,
        batch: usize,
    },
}

impl Messages {
    async fn open(reader: &Reader, batch: usize) -> Result<Self> {
        match reader {
            Reader::Shared(consumer) => {
                Ok(Messages::Shared(Box::new(pull(consumer, batch).await?)))
            }
            Reader::Exclusive { start, .. } => Self::ordered(reader, start.saturating_sub(1)).await,
        }
    }

    /// An exclusive reader's pull, from the sequence after `seen`. The ordered stream opens itself anew
    /// (after the last message it gave) on gaps in what it receives, missed heartbeats or a consumer the
    /// server dropped.
    async fn ordered(reader: &Reader, seen: u64) -> Result<Self> {
        let Reader::Exclusive {
            stream,
            description,
            ..
        } = reader
        else {
            unreachable!("only an exclusive reader pulls in order")
        };
        let consumer = stream
            .create_consumer(pull::OrderedConfig {
                description: Some(description.clone()),
                deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: seen + 1,
                },
                ..Default::default()
            })
            .await
            .context("cannot create the ordered consumer")?;
        let pull = consumer
            .messages()
            .await
            .context("cannot read from the ordered consumer")?;
        Ok(Messages::Exclusive {
            pull: Box::new(pull),
            seen,
        })
    }

    /// Opens this pull anew: a shared one afresh, an exclusive one after the last message taken. On an
    /// error the old one stays.
    async fn reopen(&mut self, reader: &Reader, batch: usize) -> Result<()> {
        *self = match self.seen() {
            None => Self::open(reader, batch).await?,
            Some(seen) => Self::ordered(reader, seen).await?,
        };
        Ok(())
    }

    /// The next message. An exclusive pull keeps stream order: async-nats recreates an ordered consumer
    /// that has handed nothing over yet from the stream's first message (after a broker restart, or missed
    /// heartbeats while the host is caught up), and read to the end that would be the whole stream again,
    /// every message skipped as committed. A message at or before the last one taken is dropped instead,
    /// and the pull opened anew after it.
    async fn next(&mut self, reader: &Reader) -> Option<Result<jetstream::Message, String>> {
        loop {
            let (pull, seen) = match self {
                Messages::Shared(s) => return s.next().await.map(|m| m.map_err(|e| e.to_string())),
                Messages::Exclusive { pull, seen } => (pull, seen),
                &mut Messages::Closed { batch, .. } => {
                    if let Err(e) = self.reopen(reader, batch).await {
                        // Not at once again: NATS may be away for a while.
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        return Some(Err(format!("opening the pull again after a pause: {e:#}")));
                    }
                    continue;
                }
            };
            let m = match pull.next().await? {
                Ok(m) => m,
                Err(e) => return Some(Err(e.to_string())),
            };
            let seq = m.info().map_or(0, |i| i.stream_sequence);
            if seq > *seen {
                *seen = seq;
                return Some(Ok(m));
            }
            tracing::warn!(
                after = *seen,
                "the ordered consumer started over from further back; opening a new pull after the last \
                 message taken"
            );
            match Self::ordered(reader, *seen).await {
                Ok(fresh) => *self = fresh,
                Err(e) => tracing::warn!("opening a new pull failed, keeping the old one: {e:#}"),
            }
        }
    }

    /// Exclusive: the last stream sequence taken.
    fn seen(&self) -> Option<u64> {
        match self {
            Messages::Shared(_) => None,
            Messages::Exclusive { seen, .. } => Some(*seen),
            Messages::Closed { seen, .. } => *seen,
        }
    }

    /// Closes the pull, at a stop, while the pipeline is paused and while the processor takes nothing: its
    /// client would otherwise ask the server for more every half a minute (async-nats renews an expired pull
    /// request whether or not its messages are taken), holding ever more messages that nothing extends, each
    /// to be delivered again after `ack_wait`, one delivery closer to `max_deliver`. Returns the messages a
    /// shared pull had prefetched: taken out of the client without waiting (so that no new request goes out
    /// meanwhile), and the pull dropped before anything is done with them (it unsubscribes, and the server
    /// drops its waiting request).
    /// Messages the server was still sending as it closed are lost to this pull and come again after
    /// `ack_wait`. An exclusive pull opens again after the last message taken.
    fn close(&mut self, batch: usize) -> Vec<jetstream::Message> {
        let seen = self.seen();
        let mut prefetched = Vec::new();
        if let Messages::Shared(pull) = self {
            use futures::FutureExt;
            // At most what two pull requests bring: more can only be arriving as this runs.
            while prefetched.len() < batch.max(64) * 32 {
                match pull.next().now_or_never() {
                    Some(Some(Ok(m))) => prefetched.push(m),
                    _ => break,
                }
            }
        }
        *self = Messages::Closed { seen, batch };
        prefetched
    }
}

/// Hands messages back to the stream (nak) for any host's next pull to take at once, not after `ack_wait`.
/// Bounded: with NATS away the client's outgoing buffer fills, and a stop must not wait for it.
async fn hand_back(messages: Vec<jetstream::Message>) {
    let mut handed_back = 0;
    let _ = tokio::time::timeout(HAND_BACK_TIMEOUT, async {
        for m in &messages {
            if m.ack_with(jetstream::AckKind::Nak(None)).await.is_ok() {
                handed_back += 1;
            }
        }
    })
    .await;
    if handed_back > 0 {
        tracing::info!(handed_back, "prefetched messages handed back to the stream");
    }
}

/// How long [`hand_back`] (or a round of progress acks while paused) may take; what is left comes again
/// after `ack_wait`.
const HAND_BACK_TIMEOUT: Duration = Duration::from_secs(2);

/// The longest a quiet pipeline waits between two ticks (see [`Processor::tick`]).
const MAX_TICK_SPACING: Duration = Duration::from_secs(60 * 60);

/// A tick's time: where event time has got to at `now`, the newest event's time plus the quiet since it
/// was ingested, so that a source whose event times lag the clock (a backfill, a delayed feed) is not made
/// late by a quiet spell; never past the clock (a source whose clock runs ahead). `None` until this host has
/// seen an event (in this run, or in the commits its plugin state was restored from): it cannot tell then
/// where event time is, and a tick at the wall clock would push a backfill ahead of itself.
fn tick_time(newest_event_ms: i64, newest_ingest_ms: i64, now: i64) -> Option<i64> {
    if newest_event_ms == i64::MIN || newest_ingest_ms == i64::MIN {
        return None;
    }
    let quiet = now.saturating_sub(newest_ingest_ms).max(0);
    Some(newest_event_ms.saturating_add(quiet).min(now))
}

/// Whether a message is a tick (see [`Processor::tick`]): no payload, and the tick's header.
fn is_tick(message: &jetstream::Message) -> bool {
    message.payload.is_empty()
        && message
            .headers
            .as_ref()
            .is_some_and(|h| h.get(headers::TICK_MS).is_some())
}

/// How far ahead of the host clock an event time may be and still move the watermark.
const WATERMARK_HORIZON_MS: i64 = 5 * 60 * 1000;

/// The processor: the chain and the epoch, on their own thread.
pub struct Processor {
    pub chain: Chain,
    pub stages: Stages,
    pub lake: Lake,
    pub shared: Arc<Shared>,
    pub client: async_nats::Client,
    pub runtime: tokio::runtime::Handle,
    pub silver_specs: Vec<crate::lake::ColumnSpec>,
    pub commit_events: u64,
    pub commit_interval: Duration,
    pub commit_after_idle: Duration,
    /// When the last micro-batch came (for `commit_after_idle`).
    last_batch: Instant,
    pub ack_wait: Duration,
    pub max_deliver: i64,
    /// Whether messages are acked (shared mode); in exclusive mode the commit log alone records progress.
    acks: bool,
    /// Exclusive mode: set once this host's lease is lost, when another host may read the stream: no
    /// commit starts after that.
    pub lease_lost: Arc<std::sync::atomic::AtomicBool>,
    /// An exclusive reader's lease, checked just before each commit record.
    pub lease_fence: Option<crate::lake::Fence>,
    pub watermark_delay_ms: i64,
    /// Put a tick in the stream after this long without messages (zero: never; see [`Processor::tick`]).
    pub idle_close: Duration,
    /// Where ticks go: the stream's first subject.
    tick_subject: String,
    /// When the last tick was put in the stream, and when the last batch with events came.
    last_tick: Option<Instant>,
    last_events: Instant,
    /// The newest event time that moved the watermark, and the newest ingest time, in ms: a tick's time is
    /// where event time has got to by then. Committed, and restored with the plugins' state.
    newest_event_ms: i64,
    newest_ingest_ms: i64,
    pub rollback_error_rate: f64,
    pub watch_batches: u64,
    /// See [`SelfTest::min_kept`] and [`SelfTest::batch`].
    self_test_min_kept: f64,
    self_test_batch: usize,
    /// Replays: the last stream sequence to process (later ones are left to the replay's consumer, which
    /// is removed at the end).
    pub until: Option<u64>,
    /// A replay from bronze: messages carry their original sequence and source id in headers.
    pub from_bronze: bool,
    /// A replay in place: the sequences it covers (any other is acked and skipped).
    pub only: Option<crate::lake::Ranges>,
    /// The plugins' clock; a replay's is set to each batch's ingest time (see `Clock::Shared`).
    pub clock: Clock,
    silver: SilverColumns,
    epoch: Option<Epoch>,
    /// Where to ack the open epoch's messages.
    deliveries: Vec<async_nats::Subject>,
    /// When their ack deadline was last extended (see [`Processor::extend_open_epoch`]).
    extended: Option<Instant>,
    /// The commit of the epoch before, running while this one fills (see [`Processor::commit`]).
    pending: Option<PendingCommit>,
    watermark: i64,
    /// Versions swapped out, for rollback, by stage.
    previous: Vec<Option<Plugin>>,
    /// Stages under watch after a swap: (batches left, calls and failures when the swap happened).
    watching: Vec<Option<(u64, u64, u64)>>,
    /// Per stage, the number of the last deploy asked for, and of the last one applied (a rollback asked
    /// for counts as applying every deploy asked before it): a deploy prepared off the thread is swapped in
    /// only if no later one was applied meanwhile (see [`Processor::deploy`]).
    requested: Vec<u64>,
    applied: Vec<u64>,
    /// Recent events, for self-tests of new plugin versions.
    sample: Sample,
    /// Where deploys and rollbacks are remembered across restarts.
    deployed: Option<super::deployed::Deployed>,
    /// Adopts the windows of hosts gone from the pipeline (shared mode; see `pipeline::adopt`).
    pub adopter: Option<super::adopt::Adopter>,
    /// Where they are sent for the other hosts of the pipeline to follow.
    herald: Option<Herald>,
}

impl Processor {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        chain: Chain,
        stages: Stages,
        lake: Lake,
        shared: Arc<Shared>,
        client: async_nats::Client,
        runtime: tokio::runtime::Handle,
        config: &Config,
    ) -> Result<Self> {
        let silver = SilverColumns::new(config.silver.columns.clone(), chain.layout())
            .map_err(|e| anyhow!(e))?;
        let n = stages.names.len();
        // Where event time had got to with the state restored: a host restarted on a quiet stream ticks on
        // from there, and closes the windows that state holds open.
        let restored = lake.event_clock();
        let processor = Processor {
            chain,
            stages,
            lake,
            shared,
            client,
            runtime,
            silver_specs: config.silver.columns.clone(),
            commit_events: config.lake.commit_events,
            commit_interval: config.lake.commit_interval,
            commit_after_idle: config.lake.commit_after_idle,
            last_batch: Instant::now(),
            ack_wait: config.consumer.ack_wait,
            max_deliver: config.consumer.max_deliver,
            acks: !config.exclusive(),
            lease_lost: Default::default(),
            lease_fence: None,
            watermark_delay_ms: i64::try_from(config.events.watermark_delay.as_millis())
                .unwrap_or(i64::MAX),
            // A replay reads a stream it must not write to, and ends when it has read its range.
            idle_close: if config.replay.is_some() {
                Duration::ZERO
            } else {
                config.events.idle_close
            },
            tick_subject: config.stream.subject().to_string(),
            last_tick: None,
            last_events: Instant::now(),
            newest_event_ms: restored.map_or(i64::MIN, |c| c.event_ms),
            newest_ingest_ms: restored.map_or(i64::MIN, |c| c.ingest_ms),
            rollback_error_rate: config.plugins.rollback_error_rate,
            watch_batches: config.plugins.watch_batches,
            self_test_min_kept: config.plugins.self_test_min_kept,
            self_test_batch: config.consumer.batch,
            until: None,
            from_bronze: config.replay.as_ref().is_some_and(|r| r.bronze.is_some()),
            only: config
                .replay
                .as_ref()
                .and_then(|r| r.in_place.as_ref())
                .map(|plan| plan.sequences.clone()),
            clock: Clock::System,
            silver,
            epoch: None,
            deliveries: Vec::new(),
            extended: None,
            pending: None,
            watermark: i64::MIN,
            previous: (0..n).map(|_| None).collect(),
            watching: vec![None; n],
            requested: vec![0; n],
            applied: vec![0; n],
            sample: Sample::default(),
            deployed: config.deployed(),
            adopter: None,
            herald: None,
        };
        processor.publish_plugins();
        Ok(processor)
    }

    /// The versions to roll back to, by stage, when the pipeline starts on versions deployed before.
    pub fn set_previous(&mut self, previous: Vec<Option<Plugin>>) {
        self.previous = previous;
        self.publish_plugins();
    }

    pub(super) fn chain_labels(&self) -> Vec<String> {
        self.chain
            .stages()
            .iter()
            .map(|s| s.plugin().label())
            .collect()
    }

    fn epoch(&mut self) -> &mut Epoch {
        if self.epoch.is_none() {
            self.epoch = Some(self.lake.begin(self.chain_labels()));
        }
        self.epoch.as_mut().expect("just set")
    }

    /// Whether the open epoch should be committed now: it is full, old enough, or the stream went quiet.
    pub fn commit_due(&self) -> bool {
        let quiet = !self.commit_after_idle.is_zero()
            && self.last_batch.elapsed() >= self.commit_after_idle;
        self.epoch.as_ref().is_some_and(|e| {
            !e.sequences().0.is_empty()
                && (e.events >= self.commit_events || e.age() >= self.commit_interval || quiet)
        })
    }

    /// Extends the ack deadline of the open epoch's messages every [`extend_every`] while it stays open
    /// (a `commit_interval` longer than that, or a quiet stream waiting for `commit_after_idle`): they are
    /// acked at its commit, and the server would otherwise deliver them again meanwhile.
    pub fn extend_open_epoch(&mut self) {
        let every = extend_every(self.ack_wait);
        let due = self.acks
            && !self.deliveries.is_empty()
            && self.epoch.as_ref().is_some_and(|e| e.age() >= every)
            && self.extended.is_none_or(|at| at.elapsed() >= every);
        if due {
            self.extended = Some(Instant::now());
            let (client, replies) = (self.client.clone(), self.deliveries.clone());
            self.runtime
                .spawn(async move { extend(&client, &replies).await });
        }
    }

    /// Whether this host's own source (`weir run` with a `[source]`) has no connection: then the stream is
    /// quiet because the events wait at the source, and ticks would move event time past them, making the
    /// backlog read after the outage late for every window.
    fn source_down(&self) -> bool {
        self.shared
            .ingest
            .load()
            .as_ref()
            .as_ref()
            .is_some_and(|ingest| !ingest.connected.load(Ordering::Relaxed))
    }

    /// Puts a tick in the stream when no message has come for `idle_close` (and none since the last tick).
    ///
    /// Why through the stream: the watermark only moves with what the pipeline reads, so a quiet stream would
    /// hold its last windows open until the next event, maybe for hours. A tick read back moves the watermark
    /// to its time (see [`tick_time`]), less `watermark_delay`, and is committed and acked like
    /// any message: the
    /// windows it closes are committed with a sequence, so a crash, a redelivery or a replay from the stream
    /// closes the same windows at the same place. Bronze, silver and the counts never see it.
    ///
    /// While nothing but ticks comes, they space out (each waits about half as long as the stream has been
    /// quiet, at most an hour, or `idle_close` if that is longer): the windows the last events left open
    /// close within a few ticks, and a pipeline quiet for days does not commit every few minutes.
    pub fn tick(&mut self) {
        if self.idle_close.is_zero()
            || self.last_batch.elapsed() < self.idle_close
            || self.shared.health.paused.load(Ordering::Relaxed)
            || self.shared.health.stopping.load(Ordering::Relaxed)
            || self.lease_lost.load(Ordering::Relaxed)
            || self.source_down()
        {
            return;
        }
        let spacing = (self.last_events.elapsed() / 2)
            .min(MAX_TICK_SPACING)
            .max(self.idle_close);
        if self.last_tick.is_some_and(|t| t.elapsed() < spacing) {
            return;
        }
        let Some(time) = tick_time(self.newest_event_ms, self.newest_ingest_ms, now_ms()) else {
            return;
        };
        self.last_tick = Some(Instant::now());
        let mut map = async_nats::HeaderMap::new();
        map.insert(headers::TICK_MS, time.to_string().as_str());
        let client = self.client.clone();
        let subject = self.tick_subject.clone();
        self.runtime.spawn(async move {
            // Unconfirmed on purpose: a tick that does not arrive is replaced by the next one.
            if let Err(e) = client
                .publish_with_headers(subject, map, Bytes::new())
                .await
            {
                tracing::warn!("cannot put a tick in the quiet stream: {e}");
            }
        });
    }

    /// Processes one micro-batch of messages. A tick (see [`Processor::tick`]) ends a part of it: the events
    /// before it are processed before its watermark moves, those after it after, as when it came alone.
    pub fn process(&mut self, mut messages: Vec<jetstream::Message>) -> Result<()> {
        while let Some(at) = messages.iter().position(is_tick) {
            let rest = messages.split_off(at + 1);
            self.process_part(messages)?;
            messages = rest;
        }
        if messages.is_empty() {
            return Ok(());
        }
        self.process_part(messages)
    }

    fn process_part(&mut self, messages: Vec<jetstream::Message>) -> Result<()> {
        let shared = self.shared.clone();
        let counters = &shared.counters;
        let mut clock = Instant::now();
        self.last_batch = clock;
        let mut received = Vec::with_capacity(messages.len());
        let mut events = Vec::with_capacity(messages.len());
        let mut quarantine = Vec::new();
        let mut immediate_acks = Vec::new();
        let parser = self.chain.parser();
        let in_epoch_before = self.epoch.as_ref().map(|e| e.sequences().clone());
        let mut in_batch = std::collections::HashSet::with_capacity(messages.len());
        let mut max_time = i64::MIN;
        let mut newest_tick = i64::MIN;
        let mut newest_ingest = i64::MIN;
        let mut refreshed = false;
        let mut newest_seq = 0;
        let mut ticks = Vec::new();
        let at = now_ms();
        let mut messages = messages.into_iter().peekable();
        while let Some(message) = messages.next() {
            if let Some(next) = messages.peek() {
                crate::event::Parser::prefetch(&next.payload);
            }
            let (seq, delivered) = match message.info() {
                Ok(info) => {
                    newest_seq = newest_seq.max(info.stream_sequence);
                    (info.stream_sequence, info.delivered)
                }
                Err(e) => {
                    tracing::warn!("a message without JetStream metadata, ignored: {e}");
                    continue;
                }
            };
            let Some(reply) = message.message.reply.clone() else {
                continue;
            };
            if self.until.is_some_and(|until| seq > until) {
                continue;
            }
            // A replay from bronze: the event keeps the sequence it had in the live stream. Only there: the
            // live stream's sequences are its own, whatever a message's headers say.
            let seq = if self.from_bronze {
                message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(headers::ORIGINAL_SEQ))
                    .and_then(|v| v.as_str().parse().ok())
                    .ok_or_else(|| {
                        anyhow!(
                            "staged message {seq} has no valid {} header",
                            headers::ORIGINAL_SEQ
                        )
                    })?
            } else {
                seq
            };
            // A replay in place covers what the live tables committed in its range, nothing else.
            if self.only.as_ref().is_some_and(|only| !only.contains(seq)) {
                counters.skipped_committed.fetch_add(1, Ordering::Relaxed);
                immediate_acks.push(reply);
                continue;
            }
            // Still in the open epoch (an earlier batch or this one), or in the one committing: its ack will
            // come with the commit. Checked for first deliveries too: a broker that crashed may have lost its
            // delivery counts, so it sends unacked messages again as new. Checked before the log is read
            // again below, which would otherwise happen for each such redelivery.
            if in_epoch_before.as_ref().is_some_and(|s| s.contains(seq))
                || self
                    .pending
                    .as_ref()
                    .is_some_and(|p| p.sequences.contains(seq))
                || !in_batch.insert(seq)
            {
                counters.skipped_in_flight.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            // A redelivery may have been committed by another host since the log was last read. Once per
            // batch: after a crash every message of the epochs it left open comes again.
            if delivered > 1 && !refreshed && !self.lake.is_committed(seq) {
                refreshed = true;
                self.refresh_lake();
            }
            // Committed already: ack and skip. Checked for first deliveries too: a consumer that was deleted
            // and created again (or a replay into the same lake) delivers committed messages afresh.
            if self.lake.is_committed(seq) {
                counters.skipped_committed.fetch_add(1, Ordering::Relaxed);
                immediate_acks.push(reply);
                continue;
            }
            let msg = message.message;
            let known = Known::of(msg.headers.as_ref(), self.from_bronze);
            if let Some(tick) = known.tick_ms.filter(|_| msg.payload.is_empty()) {
                // A tick (see `tick`, and `is_tick`): its time moves the watermark, within the same horizon as
                // event times.
                // One this host does not apply is committed without its time (0), so that a replay does not
                // apply it either.
                let ms = tick
                    .parse::<i64>()
                    .ok()
                    .filter(|&ms| ms > 0 && ms <= at + WATERMARK_HORIZON_MS)
                    .unwrap_or(0);
                if ms > 0 {
                    newest_tick = newest_tick.max(ms);
                }
                ticks.push((seq, ms));
                if self.acks {
                    self.deliveries.push(reply);
                }
                continue;
            }
            counters.received.fetch_add(1, Ordering::Relaxed);
            // Never past the clock (plus the skew event time is allowed): a header from the future would
            // hold the ticks of a quiet stream back for as long (see `tick_time`).
            let ingest_ms = known
                .ingest_ms
                .and_then(|v| v.parse().ok())
                .unwrap_or(at)
                .min(at + WATERMARK_HORIZON_MS);
            newest_ingest = newest_ingest.max(ingest_ms);
            let source_id = known
                .source_id
                .map_or_else(|| format!("seq:{seq}"), str::to_string);
            let mut rejected = known.rejected.map(str::to_string);
            let invalid_utf8 = known.invalid_utf8;
            // Exclusive mode counts no deliveries (every one is the first).
            let poison = self.acks && delivered >= self.max_deliver - 1;
            let data = msg.payload.clone();
            if poison {
                rejected = Some("poison".into());
            }
            let parsed = match &rejected {
                Some(_) => None,
                None => match parser.parse(data.clone(), ingest_ms) {
                    Ok(mut event) => {
                        event.seq = seq;
                        event.ingest_ms = ingest_ms;
                        Some(event)
                    }
                    Err(e) => {
                        rejected = Some(e.reason.to_string());
                        quarantine.push(QuarantineRow {
                            layer: Layer::Bronze,
                            seq,
                            event_id: Some(source_id.clone()),
                            stage: "parse".into(),
                            plugin: None,
                            reason: e.reason.into(),
                            failed_checks: vec![e.detail],
                            data: String::from_utf8_lossy(&data).into_owned(),
                            event_ms: None,
                            at_ms: at,
                        });
                        None
                    }
                },
            };
            if parsed.is_none() && quarantine.last().is_none_or(|q| q.seq != seq) {
                let reason = rejected.clone().unwrap_or_default();
                let detail = if poison {
                    format!("delivered {delivered} times without being committed")
                } else {
                    known
                        .rejected_detail
                        .unwrap_or("ingest could not read the event")
                        .to_string()
                };
                quarantine.push(QuarantineRow {
                    layer: Layer::Bronze,
                    seq,
                    event_id: Some(source_id.clone()),
                    stage: if poison { "pipeline" } else { "ingest" }.into(),
                    plugin: None,
                    reason,
                    failed_checks: vec![detail],
                    data: String::from_utf8_lossy(&data).into_owned(),
                    event_ms: None,
                    at_ms: at,
                });
            }
            if let Some(event) = parsed {
                events.push(event);
            }
            received.push(Received {
                seq,
                source_id,
                sse_id: known.sse_id.map(str::to_string),
                ingest_ms,
                data,
                rejected,
                invalid_utf8,
            });
            if self.acks {
                self.deliveries.push(reply);
            }
        }
        self.sample.add(events.iter().map(|e| e.raw().as_bytes()));
        counters.newest_seq.fetch_max(newest_seq, Ordering::Relaxed);
        if self.acks && !immediate_acks.is_empty() {
            let client = self.client.clone();
            self.runtime.block_on(ack(&client, &immediate_acks));
        }
        if received.is_empty() && ticks.is_empty() {
            counters.phase(Phase::Reading, clock);
            return Ok(());
        }
        if !received.is_empty() {
            self.last_events = self.last_batch;
        }
        if !ticks.is_empty() {
            counters
                .ticks
                .fetch_add(ticks.len() as u64, Ordering::Relaxed);
        }
        let labels = self.chain_labels();
        let chain_label = labels.join(",");
        if newest_ingest > i64::MIN {
            self.clock.set(newest_ingest);
        }
        clock = counters.phase(Phase::Reading, clock);
        let mut output = self.chain.run(events);
        clock = counters.phase(Phase::Plugins, clock);
        if let Some(why) = output.stop.take() {
            return Err(anyhow!(
                "{why}: stopping with the open epoch uncommitted, so its events come again after a restart \
                 (deploy a version that works, or change the stage's on_error)"
            ));
        }
        if !output.skipped.is_empty() {
            let mut skipped = counters.skipped_events.lock().expect("not poisoned");
            for stage in output.skipped.drain(..) {
                *skipped.entry(stage).or_default() += 1;
            }
        }
        // Event time moves the watermark only through events the chain kept (a far-future timestamp that
        // quality quarantines must not close every window), whose time is their own (not the fallback), and
        // never beyond the host clock plus a small skew, whatever the plugins let through.
        let horizon = now_ms() + WATERMARK_HORIZON_MS;
        for event in &output.kept {
            if event.time_ms <= horizon && !event.attributes.iter().any(|(k, _)| k == "time.source")
            {
                max_time = max_time.max(event.time_ms);
            }
        }
        self.newest_event_ms = self.newest_event_ms.max(max_time);
        self.newest_ingest_ms = self.newest_ingest_ms.max(newest_ingest);
        let max_time = max_time.max(newest_tick);
        let gold: Vec<GoldRow> = std::mem::take(&mut output.rows)
            .into_iter()
            .map(gold_row)
            .collect();
        // The batch's sequences join the epoch first: gold files are named by the epoch's range so far.
        let epoch = self.epoch();
        epoch.note_chain(&labels);
        epoch.consume(received.iter().map(|r| r.seq));
        epoch.consume_ticks(&ticks);
        if max_time > i64::MIN {
            // Saturating: an event time near i64::MIN would wrap to a watermark that closes every window.
            let watermark = max_time.saturating_sub(self.watermark_delay_ms);
            if watermark > self.watermark {
                self.watermark = watermark;
                self.shared
                    .counters
                    .watermark_ms
                    .store(watermark, Ordering::Relaxed);
                // Each part of what closes goes into the epoch as it comes (a window over pages closes
                // ~10^5 rows; held whole, they were the host's largest allocation at its peak).
                let epoch = self.epoch.as_mut().expect("opened above");
                let shared = &self.shared;
                let mut recorded = Ok(());
                let failures = self.chain.on_watermark_parts(watermark, |part| {
                    let part: Vec<GoldRow> = part.into_iter().map(gold_row).collect();
                    if recorded.is_ok() {
                        recorded = record_gold(epoch, shared, &part);
                    }
                });
                for (plugin, failure) in failures {
                    tracing::error!(plugin, "watermark failed: {failure}");
                }
                recorded?;
            }
        }
        clock = counters.phase(Phase::Watermark, clock);
        let events = !received.is_empty();
        self.record(&received, output, quarantine, gold, &chain_label)?;
        // A batch of ticks alone does not count down the watch of a swapped stage: it called no plugin.
        if events {
            self.after_batch();
        }
        counters.phase(Phase::Tables, clock);
        Ok(())
    }

    /// Writes a processed batch into the open epoch and the shared counters.
    fn record(
        &mut self,
        received: &[Received],
        output: ChainOutput,
        mut quarantine: Vec<QuarantineRow>,
        gold: Vec<GoldRow>,
        chain_label: &str,
    ) -> Result<()> {
        let shared = self.shared.clone();
        let counters = &shared.counters;
        let at = now_ms();
        let drops: Vec<DropRow> = output
            .dropped
            .iter()
            .map(|d| DropRow {
                seq: d.event.seq,
                event_id: d.event.id.clone(),
                stage: d.stage.clone(),
                plugin: d.plugin.clone(),
                rule: d.rule.clone(),
                event_ms: d.event.time_ms,
            })
            .collect();
        quarantine.extend(output.quarantined.iter().map(|q| QuarantineRow {
            layer: if q.gold { Layer::Gold } else { Layer::Silver },
            seq: q.event.seq,
            event_id: Some(q.event.id.clone()),
            stage: q.stage.clone(),
            plugin: Some(q.plugin.clone()),
            reason: q.reason.clone(),
            failed_checks: q.failed_checks.clone(),
            data: q.event.raw().to_string(),
            event_ms: Some(q.event.time_ms),
            at_ms: at,
        }));
        let kept: Vec<&crate::event::Event> = output.kept.iter().collect();
        let mismatches = self.lake.mismatches.clone();
        let silver = self.silver.clone();
        let replaying = self.until.is_some();
        let epoch = self.epoch();
        // A replay's table version holds what the plugins made; bronze stays where it is.
        if !replaying {
            epoch.add_bronze(received)?;
        }
        epoch.add_silver(&kept, &silver, chain_label, &mismatches)?;
        epoch.add_drops(&drops)?;
        epoch.add_quarantine(&quarantine)?;
        record_gold(epoch, &shared, &gold)?;
        counters
            .silver
            .fetch_add(kept.len() as u64, Ordering::Relaxed);
        counters
            .dropped
            .fetch_add(drops.len() as u64, Ordering::Relaxed);
        counters.quarantined.fetch_add(
            quarantine.iter().filter(|q| q.layer != Layer::Gold).count() as u64,
            Ordering::Relaxed,
        );
        counters
            .type_mismatches
            .store(mismatches.0.load(Ordering::Relaxed), Ordering::Relaxed);
        // The batch is done with its events, so the newest move into the recent ones rather than being cloned
        // (an enriched event carries its whole document). The older ones are dropped before taking the lock.
        let mut events = output.kept;
        let newest = events.split_off(events.len().saturating_sub(Recent::EVENTS));
        drop(events);
        let mut recent = shared.recent.lock().expect("not poisoned");
        for event in newest {
            recent.push_event(event);
        }
        for q in &quarantine {
            crate::runtime::stats::count_label(&mut recent.quarantine_reasons, &q.reason);
        }
        Ok(())
    }

    /// Starts committing the open epoch: captures the plugins' state (which must match the epoch's data, so
    /// here, between batches), then leaves the encoding, uploads, commit record and acks to a task, and
    /// returns to fill the next epoch meanwhile. The commit before is settled first: epochs commit in order,
    /// and at most two hold unacked messages.
    pub fn commit(&mut self) -> Result<()> {
        self.settle()?;
        if self.lease_lost.load(Ordering::SeqCst) {
            anyhow::bail!(
                "this host's exclusive lease is lost: the open epoch stays uncommitted, for the lease's \
                 holder to read again"
            );
        }
        let Some(mut epoch) = self.epoch.take() else {
            return Ok(());
        };
        if epoch.sequences().0.is_empty() {
            return Ok(());
        }
        epoch.note_chain(&self.chain_labels());
        if self.newest_event_ms > i64::MIN && self.newest_ingest_ms > i64::MIN {
            epoch.note_event_clock(crate::lake::EventClock {
                event_ms: self.newest_event_ms,
                ingest_ms: self.newest_ingest_ms,
            });
        }
        let started = Instant::now();
        let full = self.lake.wants_full_state();
        let state = super::state::capture(&mut self.chain, &self.stages.names, full, now_ms())?;
        let captured = self.shared.counters.phase(Phase::State, started);
        // The API tells which recent gold rows the lake holds by the commits it finds in the log.
        let first_seq = epoch.sequences().0.first().map_or(0, |r| r.0);
        let gold_through = self
            .shared
            .recent
            .lock()
            .expect("not poisoned")
            .gold_commit_started(first_seq);
        let replies = std::mem::take(&mut self.deliveries);
        self.extended = None;
        let events = epoch.events;
        let commit = self
            .lake
            .start_commit(epoch, Some(Bytes::from(state)), full)?;
        let commit = match &self.lease_fence {
            Some(fence) => commit.fenced_by(fence.clone()),
            None => commit,
        };
        let sequences = commit.sequences().clone();
        let client = self.client.clone();
        let ack_wait = self.ack_wait;
        let shared = self.shared.clone();
        let task = self.runtime.spawn(async move {
            // Keep the epoch's messages ours while the store takes its time.
            let progress = (!replies.is_empty()).then(|| {
                tokio::spawn(progress(
                    client.clone(),
                    replies.clone(),
                    extend_every(ack_wait),
                    false,
                ))
            });
            let result = commit.run().await;
            if let Some(progress) = progress {
                progress.abort();
            }
            if result.is_ok() {
                shared.health.store_reachable.store(true, Ordering::Relaxed);
                if !replies.is_empty() {
                    ack(&client, &replies).await;
                }
                crash::point("commit.after_ack");
                shared
                    .counters
                    .last_commit_duration_us
                    .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
            }
            result
        });
        self.pending = Some(PendingCommit {
            task,
            sequences,
            events,
            gold_through,
        });
        self.shared.counters.phase(Phase::Commit, captured);
        Ok(())
    }

    /// Commits the open epoch and waits until it is committed and acked (the end of a run).
    pub fn commit_and_wait(&mut self) -> Result<()> {
        self.commit()?;
        self.settle()
    }

    /// Settles the running commit once it has finished, without waiting for it (a failed commit stops the
    /// pipeline as soon as it is seen).
    pub fn settle_finished(&mut self) -> Result<()> {
        if self.pending.as_ref().is_some_and(|p| p.task.is_finished()) {
            self.settle()?;
        }
        Ok(())
    }

    /// Waits for the running commit, if any, and takes its outcome into the lake and the counters.
    pub fn settle(&mut self) -> Result<()> {
        let Some(pending) = self.pending.take() else {
            return Ok(());
        };
        let waiting = Instant::now();
        let done = match pending.task.is_finished() {
            true => self.runtime.block_on(pending.task),
            false => self.hold_open_epoch_while(pending.task),
        };
        let done = done.context("the commit task panicked")??;
        let others = done.others_committed();
        let record = self.lake.finish_commit(done);
        {
            let mut recent = self.shared.recent.lock().expect("not poisoned");
            recent.gold_committed(pending.gold_through);
            if others {
                recent.gold_shared_lake();
            }
        }
        let c = &self.shared.counters;
        c.phase(Phase::Commit, waiting);
        c.commits.fetch_add(1, Ordering::Relaxed);
        c.committed_events
            .fetch_add(pending.events, Ordering::Relaxed);
        c.bytes_written.fetch_add(
            record.files().map(|f| f.bytes).sum::<u64>(),
            Ordering::Relaxed,
        );
        c.last_commit_ms
            .store(record.committed_at_ms, Ordering::Relaxed);
        tracing::debug!(
            epoch = record.epoch,
            events = pending.events,
            files = record.files().count(),
            us = c.last_commit_duration_us.load(Ordering::Relaxed),
            "committed"
        );
        Ok(())
    }

    /// Waits for `work` on the pipeline's thread. The open epoch's messages wait too, unacked: they are kept
    /// ours meanwhile, or they would come again after `ack_wait` and use up their deliveries.
    fn hold_open_epoch_while<F: std::future::Future>(&self, work: F) -> F::Output {
        let _extending = self.extend_open_epoch_meanwhile();
        self.runtime.block_on(work)
    }

    /// Keeps the open epoch's messages ours (progress acks) until the guard is dropped: for work on the
    /// pipeline's thread that may outlast `ack_wait`.
    pub(super) fn extend_open_epoch_meanwhile(&self) -> Option<Extending> {
        (!self.deliveries.is_empty()).then(|| {
            // At once: the open epoch's messages may have gone most of a period unextended already.
            Extending(self.runtime.spawn(progress(
                self.client.clone(),
                self.deliveries.clone(),
                extend_every(self.ack_wait),
                true,
            )))
        })
    }

    /// Whether nothing is in hand: no epoch open, no commit under way.
    pub(super) fn is_idle(&self) -> bool {
        self.epoch.is_none() && self.pending.is_none()
    }

    /// Reads the commit records other hosts added since the last look. A failure only means a later look.
    pub(super) fn refresh_lake(&mut self) {
        match self.runtime.block_on(self.lake.refresh()) {
            // Memory no longer holds every gold row: the API reads the lake too.
            Ok(true) => self
                .shared
                .recent
                .lock()
                .expect("not poisoned")
                .gold_shared_lake(),
            Ok(false) => {}
            Err(e) => tracing::warn!("reading the commit log: {e:#}"),
        }
    }

    /// After each batch: watch recently swapped stages, publish the plugins' stats.
    fn after_batch(&mut self) {
        for index in 0..self.watching.len() {
            let Some((left, calls0, failures0)) = self.watching[index] else {
                continue;
            };
            let stats = self.chain.stages()[index].plugin().stats();
            let failures: u64 = stats.failures.values().sum::<u64>() - failures0;
            let calls = stats.calls.saturating_sub(calls0).max(1);
            let rate = failures as f64 / calls as f64;
            if failures > 0 && rate > self.rollback_error_rate {
                let stage = self.stages.names[index].clone();
                tracing::warn!(%stage, rate, "the new version fails too often; rolling back");
                // The other hosts roll back too: a version that fails this often here is judged bad.
                if let Err(e) = self.rollback(&stage, false, true, None) {
                    tracing::error!(%stage, "automatic rollback failed: {e}");
                }
                self.watching[index] = None;
            } else if left <= 1 {
                self.watching[index] = None;
            } else {
                self.watching[index] = Some((left - 1, calls0, failures0));
            }
        }
        self.publish_plugins();
    }

    fn publish_plugins(&self) {
        let infos = self
            .chain
            .stages()
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let p = s.plugin();
                PluginInfo {
                    stage: self.stages.names[i].clone(),
                    name: p.manifest().name.clone(),
                    version: p.manifest().version.clone(),
                    sha256: p.loaded().sha256.clone(),
                    kind: crate::runtime::bindings::kind_name(p.manifest().kind).to_string(),
                    emits: p.plan().emits.iter().map(|t| gold_table(t)).collect(),
                    previous: self.previous[i].as_ref().map(Plugin::label),
                    stats: p.stats().clone(),
                }
            })
            .collect();
        self.shared.plugins.store(Arc::new(infos));
    }

    /// Applies a control request. A reply goes out once the versions are published, so whoever asked sees
    /// the stage's new version in `shared.plugins` when it hears back.
    pub fn handle(&mut self, control: Control) {
        let (reply, result) = match control {
            Control::Deploy {
                stage,
                plugin,
                bytes,
                announce,
                reply,
            } => {
                self.prepare(stage, plugin, bytes, announce, reply);
                return;
            }
            Control::Ready {
                stage,
                generation,
                plugin,
                bytes,
                announce,
                reply,
            } => (
                reply,
                self.deploy(&stage, generation, *plugin, bytes, announce),
            ),
            Control::Rollback {
                stage,
                announce,
                to,
                reply,
            } => (reply, self.rollback(&stage, true, announce, to.as_deref())),
        };
        self.publish_plugins();
        let _ = reply.send(result);
    }

    fn stage_index(&self, stage: &str) -> Result<usize, String> {
        self.stages
            .names
            .iter()
            .position(|n| n == stage)
            .ok_or_else(|| {
                format!(
                    "no stage named {stage:?} (stages: {})",
                    self.stages.names.join(", ")
                )
            })
    }

    /// Gets a new version of a stage's plugin ready off the pipeline thread, so that batches go on meanwhile:
    /// starts it, runs it on recent events as a self-test (in an instance of its own, so the test leaves no
    /// state; beside a fresh instance of the serving version when it keeps few: see [`SelfTest::run`]),
    /// starts the instance that will serve, and hands it back as [`Control::Ready`]. A Python plugin takes a
    /// second or more to start; the pipeline only stops for the swap itself.
    fn prepare(
        &mut self,
        stage: String,
        loaded: Arc<LoadedPlugin>,
        bytes: Bytes,
        announce: bool,
        reply: tokio::sync::oneshot::Sender<Result<String, String>>,
    ) {
        let index = match self.stage_index(&stage) {
            Ok(index) => index,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        self.requested[index] += 1;
        let generation = self.requested[index];
        let spec = |i: usize, loaded: Arc<LoadedPlugin>| StageSpec {
            loaded,
            config: self.stages.configs[i].clone(),
            limits: self.stages.limits[i].clone(),
        };
        let stages = self.chain.stages();
        let test = SelfTest {
            shape: self.chain.shape().clone(),
            sample: self.sample.events(),
            min_kept: self.self_test_min_kept,
            batch: self.self_test_batch,
            clock: self.clock.clone(),
            before: (0..index)
                .map(|i| spec(i, stages[i].plugin().loaded().clone()))
                .collect(),
            serving: spec(index, stages[index].plugin().loaded().clone()),
            candidate: spec(index, loaded.clone()),
        };
        let control = self.shared.control.clone();
        self.runtime.spawn_blocking(move || {
            let preparing = Instant::now();
            let ready = test.run();
            tracing::info!(%stage, ok = ready.is_ok(), took_ms = preparing.elapsed().as_secs_f64() * 1e3, "prepared a new version off the pipeline thread");
            match ready {
                // A pipeline that stopped meanwhile drops the reply: the caller hears it is stopping.
                Ok(plugin) => drop(control.blocking_send(Control::Ready {
                    stage,
                    generation,
                    plugin: Box::new(plugin),
                    bytes,
                    announce,
                    reply,
                })),
                Err(e) => drop(reply.send(Err(e))),
            }
        });
    }

    /// Swaps a started, self-tested version in for a stage's plugin, handing the old version's state over,
    /// unless a later deploy or a rollback of the stage came while it was being prepared.
    fn deploy(
        &mut self,
        stage: &str,
        generation: u64,
        new: Plugin,
        bytes: Bytes,
        announce: bool,
    ) -> Result<String, String> {
        let index = self.stage_index(stage)?;
        if generation <= self.applied[index] {
            return Err(format!("{} {SUPERSEDED}", new.label()));
        }
        let label = new.label();
        let pause = Instant::now();
        let old = self.swap(index, new)?;
        self.applied[index] = generation;
        self.shared
            .pauses
            .record(pause.elapsed().as_micros() as u64);
        let stats = self.chain.stages()[index].plugin().stats();
        self.watching[index] = Some((
            self.watch_batches,
            stats.calls,
            stats.failures.values().sum(),
        ));
        let replaced = old.loaded().sha256.clone();
        self.previous[index] = Some(old);
        self.shared.counters.swaps.fetch_add(1, Ordering::Relaxed);
        tracing::info!(%stage, plugin = %label, "deployed");
        if let Some(record) = &self.deployed
            && let Err(e) = record.record_deploy(stage, &bytes, &self.stages.configured[index])
        {
            tracing::warn!(%stage, "deployed, but a restart will not remember it: {e}");
        }
        if announce {
            self.announce(index, replaced, Some(bytes));
        }
        Ok(label)
    }

    /// Returns a stage to the version before the last swap (only if its SHA-256 is `to`, when given). One
    /// asked for (not the error-rate watch's, which a fix being prepared should follow) also supersedes the
    /// deploys being prepared.
    fn rollback(
        &mut self,
        stage: &str,
        asked: bool,
        announce: bool,
        to: Option<&str>,
    ) -> Result<String, String> {
        let index = self.stage_index(stage)?;
        let before = self.previous[index]
            .as_ref()
            .ok_or_else(|| format!("stage {stage} has no previous version to roll back to"))?;
        if let Some(to) = to
            && before.loaded().sha256 != to
        {
            return Err(format!(
                "stage {stage}'s previous version here is {}, not the one asked for",
                before.label()
            ));
        }
        let previous = self.previous[index].take().expect("checked above");
        let label = previous.label();
        let pause = Instant::now();
        let from = self.swap(index, previous)?.loaded().sha256.clone();
        if asked {
            self.applied[index] = self.requested[index];
        }
        self.shared
            .pauses
            .record(pause.elapsed().as_micros() as u64);
        self.watching[index] = None;
        self.shared
            .counters
            .rollbacks
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(%stage, plugin = %label, "rolled back");
        if let Some(record) = &self.deployed
            && let Err(e) = record.record_rollback(stage)
        {
            tracing::warn!(%stage, "rolled back, but a restart will not remember it: {e}");
        }
        if announce {
            self.announce(index, from, None);
        }
        Ok(label)
    }

    /// Tells the other hosts of the pipeline (see [`super::cluster`]), off this thread, that stage `index`
    /// now runs its serving version in place of `replaced`: deployed with `component`, or rolled back.
    fn announce(&self, index: usize, replaced: String, component: Option<Bytes>) {
        let Some(herald) = &self.herald else {
            return;
        };
        // The record comes back to this host's own follower, which must see the version it names as the
        // one served here, or it would deploy it again.
        self.publish_plugins();
        let serving = self.chain.stages()[index].plugin();
        herald.announce(
            index,
            &self.stages.names[index],
            (serving.label(), serving.loaded()),
            replaced,
            component,
        );
    }

    /// Where deploys and rollbacks made on this host go, for the other hosts to follow.
    pub fn announce_to(&mut self, herald: Herald) {
        self.herald = Some(herald);
    }

    /// Puts `new` in place of stage `index`, with the current version's keyed state and snapshot; returns
    /// the version it replaced. On failure nothing changes (and `new` is dropped).
    fn swap(&mut self, index: usize, mut new: Plugin) -> Result<Plugin, String> {
        let replacement = self
            .chain
            .replacement(index, &new)
            .map_err(|e| format!("{e:#}"))?;
        let current = self.chain.stages_mut()[index].plugin_mut();
        let snapshot = current
            .take_snapshot()
            .map_err(|e| format!("the current version's snapshot: {e}"))?;
        new.set_state(current.take_state());
        if let Some(snapshot) = snapshot
            && let Err(e) = new.hand_over(snapshot)
        {
            // Give the state back: nothing changed.
            let state = new.take_state();
            self.chain.stages_mut()[index].plugin_mut().set_state(state);
            return Err(format!("the new version refused the current state: {e:#}"));
        }
        let mut old = self.chain.replace_stage(replacement, new);
        // The old version keeps a copy of the state, for a rollback that hands it back.
        old.set_state(crate::runtime::KeyedState::default());
        self.silver = SilverColumns::new(self.silver_specs.clone(), self.chain.layout())
            .map_err(|e| e.to_string())?;
        Ok(old)
    }
}

/// A row an aggregate emitted, as the lake writes it.
pub(super) fn gold_row(r: super::chain::EmittedRow) -> GoldRow {
    GoldRow {
        table: r.row.table,
        plugin: r.plugin,
        columns: r.row.columns,
    }
}

/// Adds gold rows to the epoch, the counters, and the recent rows the API answers from.
fn record_gold(epoch: &mut Epoch, shared: &Shared, gold: &[GoldRow]) -> Result<()> {
    if gold.is_empty() {
        return Ok(());
    }
    epoch.add_gold(gold)?;
    shared
        .counters
        .gold_rows
        .fetch_add(gold.len() as u64, Ordering::Relaxed);
    let mut recent = shared.recent.lock().expect("not poisoned");
    for row in gold {
        recent.push_gold(&gold_table(&row.table), row);
    }
    Ok(())
}

/// Extends the ack deadline of messages (a progress ack); one that went missing only means a redelivery,
/// which the commit log turns into a skip.
pub(super) async fn extend(client: &async_nats::Client, replies: &[async_nats::Subject]) {
    for reply in replies {
        let _ = client
            .publish(reply.clone(), Bytes::from_static(b"+WPI"))
            .await;
    }
}

/// Acks messages (after their commit).
async fn ack(client: &async_nats::Client, replies: &[async_nats::Subject]) {
    let send = async {
        for reply in replies {
            if let Err(e) = client
                .publish(reply.clone(), Bytes::from_static(b"+ACK"))
                .await
            {
                tracing::warn!("cannot ack: {e}");
            }
        }
        client.flush().await
    };
    // A lost ack means a redelivery, which the commit log turns into a skip: waiting for a server that does
    // not come back only held the pipeline (and a stop) forever.
    match tokio::time::timeout(bus::CONFIRM_TIMEOUT, send).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("acks sent, not confirmed: {e}"),
        Err(_) => tracing::warn!(
            messages = replies.len(),
            "NATS did not take the acks within {:?}: those messages will come again and be skipped as \
             committed",
            bus::CONFIRM_TIMEOUT
        ),
    }
}

/// How often messages held unacked have their ack deadline extended: a quarter of `ack_wait`. A message can
/// go a period unextended while it waits for the processor ([`super::handover`]), a commit interval in the
/// open epoch, and a period more before its epoch's commit extends it: with a quarter, that stays within
/// `ack_wait` for commit intervals up to half of it.
pub fn extend_every(ack_wait: Duration) -> Duration {
    (ack_wait / 4).max(Duration::from_millis(250))
}

/// Tells the server, every `every` (from now when `now`, else from `every` on), that these messages are
/// still being worked on.
async fn progress(
    client: async_nats::Client,
    replies: Vec<async_nats::Subject>,
    every: Duration,
    now: bool,
) {
    let mut tick = tokio::time::interval(every);
    if !now {
        tick.tick().await;
    }
    loop {
        tick.tick().await;
        extend(&client, &replies).await;
        tracing::info!(
            messages = replies.len(),
            "commit still running; extended the messages' ack deadline"
        );
    }
}

/// With messages waiting in the stream and none arriving for this long, the pull is opened anew (see
/// [`fetch`]). async-nats itself sends a fresh request once one has gone unanswered past its expiry plus
/// 5 s (35 s); this comes sooner, and also when that does not help.
const STALL_AFTER: Duration = Duration::from_secs(15);

/// [`STALL_AFTER`] for an exclusive reader. Its pull waits for nothing but the stream: with messages in the
/// stream after the last one handed over, five quiet seconds mean it is stuck. A new pull costs one consumer
/// and can neither lose nor repeat a message (it starts right after the last one handed over).
const EXCLUSIVE_STALL_AFTER: Duration = Duration::from_secs(5);

impl Reader {
    fn stall_after(&self) -> Duration {
        match self {
            Reader::Shared(_) => STALL_AFTER,
            Reader::Exclusive { .. } => EXCLUSIVE_STALL_AFTER,
        }
    }
}

/// A pull of up to 16 micro-batches per request.
async fn pull(
    consumer: &jetstream::consumer::Consumer<pull::Config>,
    batch: usize,
) -> Result<pull::Stream> {
    consumer
        .stream()
        // Pull requests of 16 micro-batches (~4 MB of ~1 kB events): with 4, the processor waited on round
        // trips to the server (pipeline_throughput at 300k events: ~13k → ~15k events/s; at 1M, where the
        // plugins' growing state dominates, no change beyond noise).
        .max_messages_per_batch(batch.max(64) * 16)
        .heartbeat(Duration::from_secs(5))
        .messages()
        .await
        .context("cannot pull from the consumer")
}

/// Whether a pull that brought nothing for [`STALL_AFTER`] is stuck: the consumer has messages to deliver
/// (new ones, or delivered ones that were never acked and come again after `ack_wait`), the server may
/// deliver them (ack-pending below its limit), and no pull request of ours is waiting at the server, so
/// none will come. A healthy pull always keeps a request there; an idle stream has nothing to deliver.
/// Returns how many messages wait (new and unacked).
pub async fn stalled(consumer: &jetstream::consumer::Consumer<pull::Config>) -> Option<u64> {
    let info = consumer.get_info().await.ok()?;
    let limit = info.config.max_ack_pending;
    let room = limit <= 0 || (info.num_ack_pending as i64) < limit;
    let waiting = info.num_pending + info.num_ack_pending as u64;
    (waiting > 0 && room && info.num_waiting == 0).then_some(waiting)
}

/// Measures every few seconds what the reader has yet to take or ack, into `Counters::pending`: a shared
/// consumer's undelivered and unacked messages; for an exclusive reader, the stream's messages after the
/// newest one read.
pub async fn measure_pending(
    reader: Reader,
    shared: Arc<Shared>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let pending = match &reader {
            Reader::Shared(consumer) => consumer
                .get_info()
                .await
                .ok()
                .map(|info| info.num_pending + info.num_ack_pending as u64),
            Reader::Exclusive { stream, start, .. } => {
                let mut stream = stream.clone();
                stream.info().await.ok().map(|info| {
                    // Read through: the newest message taken, else where this run started.
                    let read = shared
                        .counters
                        .newest_seq
                        .load(Ordering::Relaxed)
                        .max(start.saturating_sub(1))
                        .max(info.state.first_sequence.saturating_sub(1));
                    info.state.last_sequence.saturating_sub(read)
                })
            }
        };
        if let Some(pending) = pending {
            shared.counters.pending.store(pending, Ordering::Relaxed);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Pulls messages and sends micro-batches to the processor until `stop`.
pub async fn fetch(
    reader: Reader,
    batch: usize,
    tx: super::handover::Sender,
    shared: Arc<Shared>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<()> {
    // A host starting paused opens no pull until it is resumed (`next` opens a closed one).
    let mut messages = match (shared.health.paused.load(Ordering::Relaxed), &reader) {
        (true, Reader::Shared(_)) => Messages::Closed { seen: None, batch },
        (true, Reader::Exclusive { start, .. }) => Messages::Closed {
            seen: Some(start.saturating_sub(1)),
            batch,
        },
        (false, _) => Messages::open(&reader, batch).await?,
    };
    let stall_after = reader.stall_after();
    // Only a shared pull's messages wait for an ack (an exclusive reader acks nothing).
    let blocked_after = match &reader {
        Reader::Shared(consumer) => Some(extend_every(consumer.cached_info().config.ack_wait)),
        Reader::Exclusive { .. } => None,
    };
    shared.health.nats_connected.store(true, Ordering::Relaxed);
    // Since when the pull has brought nothing (time spent handing batches to the processor not counted).
    let mut quiet_since = tokio::time::Instant::now();
    loop {
        let mut buf = Vec::with_capacity(batch);
        // Paused before anything was pulled: nothing is pulled, and the hold below takes what the client
        // had prefetched.
        if !shared.health.paused.load(Ordering::Relaxed) {
            // Wait for the first message (or stop, or a pause), then gather the rest for a few milliseconds at
            // most.
            tokio::select! {
                biased;
                _ = stop.changed() => {
                    // What the client prefetched goes back now, for the other hosts (or the next run) to take
                    // at once rather than after `ack_wait`.
                    give_back(Vec::new(), &mut messages, &reader, batch).await;
                    return Ok(());
                }
                _ = paused(&shared) => continue,
                next = tokio::time::timeout_at(quiet_since + stall_after, messages.next(&reader)) => {
                    match next {
                        Ok(Some(Ok(m))) => buf.push(m),
                        // Not asked to stop: the run failed, so that a supervisor starts it again.
                        Ok(None) => anyhow::bail!(
                            "the pull from the stream ended (the consumer deleted, or its limits refused by the \
                             server): stopping, so that a restart opens it again"
                        ),
                        // An error (a missed heartbeat comes every 10 s while no pull request is waiting at the
                        // server) or the quiet spell's end: past `stall_after`, see whether the pull is stuck.
                        quiet => {
                            if let Ok(Some(Err(e))) = &quiet {
                                shared.health.nats_connected.store(false, Ordering::Relaxed);
                                tracing::warn!("pulling messages: {e}");
                                tokio::time::sleep(Duration::from_millis(200)).await;
                            }
                            if quiet_since.elapsed() >= stall_after {
                                reopen_if_stalled(&reader, batch, &mut messages, &shared).await;
                                quiet_since = tokio::time::Instant::now();
                            }
                            continue;
                        }
                    }
                }
            }
            shared.health.nats_connected.store(true, Ordering::Relaxed);
            let deadline = tokio::time::sleep(Duration::from_millis(5));
            tokio::pin!(deadline);
            while buf.len() < batch {
                tokio::select! {
                    _ = &mut deadline => break,
                    next = messages.next(&reader) => match next {
                        Some(Ok(m)) => buf.push(m),
                        _ => break,
                    }
                }
            }
        }
        // Held while paused; handed over unless a pause or a stop comes while the processor takes nothing, or
        // the processor has gone. What it has not taken is then held (paused) or given back.
        loop {
            if shared.health.paused.load(Ordering::Relaxed) {
                hold_while_paused(&mut buf, &mut messages, &reader, batch, &shared, &stop).await;
            }
            if stop_asked(&stop) {
                give_back(buf, &mut messages, &reader, batch).await;
                return Ok(());
            }
            buf = match hand_over(
                buf,
                batch,
                &tx,
                &mut messages,
                blocked_after,
                &shared,
                &stop,
            )
            .await
            {
                HandOver::Done => break,
                HandOver::Interrupted(left) => left,
                HandOver::ProcessorGone(left) => {
                    give_back(left, &mut messages, &reader, batch).await;
                    return Ok(());
                }
            };
        }
        quiet_since = tokio::time::Instant::now();
    }
}

/// Returns once the pipeline is paused (looked at every 100 ms).
async fn paused(shared: &Shared) {
    while !shared.health.paused.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// While the pipeline is paused (and not stopping): closes the pull, adds what its client had prefetched to
/// `held`, and holds them all, extending their ack deadline every quarter of it (each extension is a message
/// per event). Nothing is handed back: the pipeline's other hosts are paused too, and a message handed back
/// would only be delivered once more, one step closer to `max_deliver`. `next` opens the pull again.
async fn hold_while_paused(
    held: &mut Vec<jetstream::Message>,
    messages: &mut Messages,
    reader: &Reader,
    batch: usize,
    shared: &Shared,
    stop: &tokio::sync::watch::Receiver<bool>,
) {
    held.extend(messages.close(batch));
    tracing::info!(
        held = held.len(),
        "paused: holding the messages pulled, taking nothing more until resumed"
    );
    let mut extended: Option<tokio::time::Instant> = None;
    while shared.health.paused.load(Ordering::Relaxed) && !stop_asked(stop) {
        if let Reader::Shared(consumer) = reader
            && extended.is_none_or(|at| {
                at.elapsed() >= extend_every(consumer.cached_info().config.ack_wait)
            })
        {
            // Bounded, so that a stop with NATS away does not wait on the client's full buffer.
            let _ = tokio::time::timeout(HAND_BACK_TIMEOUT, async {
                for m in held.iter() {
                    let _ = m.ack_with(jetstream::AckKind::Progress).await;
                }
            })
            .await;
            extended = Some(tokio::time::Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// At a stop (or with the processor gone): what the fetch loop holds and the processor has not taken (while
/// paused, or while it took nothing), with what the pull's client prefetched, is handed back, for the next
/// run or another host to take at once rather than after `ack_wait`. An exclusive reader acks nothing: its
/// next run reads on from the lake's log.
async fn give_back(
    mut held: Vec<jetstream::Message>,
    messages: &mut Messages,
    reader: &Reader,
    batch: usize,
) {
    held.extend(messages.close(batch));
    if let Reader::Shared(_) = reader {
        hand_back(held).await;
    }
}

/// Whether the run is asked to stop; a stop signal whose sender has gone counts as one, as it does for the
/// pull's `stop.changed()`.
fn stop_asked(stop: &tokio::sync::watch::Receiver<bool>) -> bool {
    *stop.borrow() || stop.has_changed().is_err()
}

/// Returns once [`stop_asked`] holds.
async fn stopping(stop: &tokio::sync::watch::Receiver<bool>) {
    let _ = stop.clone().wait_for(|&stop| stop).await;
}

/// How [`hand_over`] ended.
enum HandOver {
    /// The processor took every message.
    Done,
    /// A pause or a stop came while the processor took nothing: the messages it has not taken.
    Interrupted(Vec<jetstream::Message>),
    /// The processor has gone: the messages it has not taken.
    ProcessorGone(Vec<jetstream::Message>),
}

/// Sends `messages` to the processor in micro-batches of `batch`, each kept (its ack deadline extended)
/// until the processor takes it.
///
/// A shared pull is closed, as for a pause, once the processor has taken nothing for `blocked_after` (a
/// commit waiting for a store that is away, a slow plugin), and what its client had prefetched is queued
/// behind, kept like the rest. Left open, the pull would keep those messages unextended, and its client asks
/// the server for more every half a minute whether or not its messages are taken: over an outage of minutes
/// they would all be delivered again and again, towards `max_deliver`. `next` opens the pull again.
///
/// A pause or a stop while the processor takes nothing ends the hand-over with what it has not taken: a
/// paused pipeline processes only what its processor had already taken, and a stop hands the rest back
/// rather than waiting for the processor to take it (the stop still waits for the batches in the queue and
/// their commit).
async fn hand_over(
    messages: Vec<jetstream::Message>,
    batch: usize,
    tx: &super::handover::Sender,
    pull: &mut Messages,
    blocked_after: Option<Duration>,
    shared: &Shared,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> HandOver {
    let mut queued = super::handover::Queued::default();
    tx.queue(&mut queued, messages, batch);
    let after = blocked_after.unwrap_or_default();
    let blocked = tokio::time::sleep(after);
    tokio::pin!(blocked);
    let mut closed = blocked_after.is_none();
    while !queued.is_empty() {
        tokio::select! {
            biased;
            sent = tx.send_queued(&mut queued) => {
                if sent.is_err() {
                    return HandOver::ProcessorGone(tx.unqueue(&mut queued));
                }
                blocked.as_mut().reset(tokio::time::Instant::now() + after);
            }
            _ = &mut blocked, if !closed => {
                closed = true;
                let prefetched = pull.close(batch);
                tracing::info!(
                    prefetched = prefetched.len(),
                    "the processor has taken nothing for {after:?}: closing the pull until it does, keeping \
                     what its client had prefetched"
                );
                tx.queue(&mut queued, prefetched, batch);
            }
            _ = paused(shared) => return HandOver::Interrupted(tx.unqueue(&mut queued)),
            _ = stopping(stop) => return HandOver::Interrupted(tx.unqueue(&mut queued)),
        }
    }
    HandOver::Done
}

/// Opens a new pull in place of `messages` when it is stuck. A pull can stop asking for messages and report
/// nothing (the client's count of what it asked for drifts, as when the client dropped messages it had no
/// room for; nats.rs issues 860 and 1285); a new one starts afresh.
///
/// - Shared: when [`stalled`] says so. No request of the old pull is waiting at the server, so nothing was
///   sent its way that would come back only after `ack_wait`.
/// - Exclusive: when the stream holds messages after the last one taken; the new ordered consumer starts
///   right after it (the old one goes once the server sees it idle).
async fn reopen_if_stalled(
    reader: &Reader,
    batch: usize,
    messages: &mut Messages,
    shared: &Shared,
) {
    let waiting = match (reader, messages.seen()) {
        (Reader::Shared(consumer), _) => stalled(consumer).await,
        (Reader::Exclusive { stream, .. }, seen) => match stream.get_info().await {
            Ok(info) => {
                // Messages removed by age or size are not waiting.
                let next = (seen.unwrap_or(0) + 1).max(info.state.first_sequence);
                (info.state.messages > 0 && info.state.last_sequence >= next)
                    .then(|| info.state.last_sequence + 1 - next)
            }
            Err(_) => None,
        },
    };
    let Some(pending) = waiting else {
        return;
    };
    tracing::warn!(
        pending,
        "no messages for {}s though the stream holds more for this consumer and no pull request of ours \
         is waiting at the server; opening a new pull",
        reader.stall_after().as_secs()
    );
    match messages.reopen(reader, batch).await {
        Ok(()) => {
            shared
                .counters
                .pulls_reopened
                .fetch_add(1, Ordering::Relaxed);
        }
        // The server is unreachable, most likely: the old pull goes on, and the next quiet spell asks again.
        Err(e) => tracing::warn!("opening a new pull failed, keeping the old one: {e:#}"),
    }
}

/// Per-stage summary for logs: `stage=plugin@version`.
pub fn describe(names: &[String], chain: &Chain) -> String {
    let mut out = BTreeMap::new();
    for (name, stage) in names.iter().zip(chain.stages()) {
        out.insert(name.clone(), stage.plugin().label());
    }
    out.into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    /// A tick carries event time on by the quiet since the last event, never past the clock, and not at all
    /// before the host has seen an event.
    #[test]
    fn a_tick_moves_event_time_on_by_the_quiet() {
        let now = 1_800_000_000_000;
        // A backfill an hour behind the clock, quiet for ten minutes: ten minutes on, still an hour behind.
        let event = now - 70 * MIN;
        let ingest = now - 10 * MIN;
        assert_eq!(tick_time(event, ingest, now), Some(event + 10 * MIN));
        // A source whose clock runs eight minutes ahead: the tick stops at the clock.
        assert_eq!(tick_time(now + 8 * MIN - MIN, now - MIN, now), Some(now));
        // An ingest time ahead of this host's clock counts no quiet.
        assert_eq!(
            tick_time(now - 5 * MIN, now + MIN, now),
            Some(now - 5 * MIN)
        );
        // Nothing seen since the start: no tick.
        assert_eq!(tick_time(i64::MIN, i64::MIN, now), None);
        assert_eq!(tick_time(now, i64::MIN, now), None);
    }
}
