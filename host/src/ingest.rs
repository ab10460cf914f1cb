//! Ingest: an SSE source into a JetStream stream, every source event exactly once and in order.
//!
//! The loop reads the source, turns each event into a message (its source id as `Nats-Msg-Id`, its SSE id and
//! receive time as headers), publishes it through the ordered [`Publisher`], and on any break flushes what is
//! in flight, backs off and reconnects with the last published SSE id as `Last-Event-ID`. The published
//! position is saved in JetStream, so a restarted host resumes where it left off; anything sent twice in
//! between is dropped by the stream's duplicate window.
//!
//! A position that names times (the live stream's do) is sent back `source.resume_overlap` earlier (see
//! [`rewind`]): the source resumes at the first event at or after a time, and an event that followed the
//! position with an earlier time would otherwise never come. Until the source is past the position again,
//! what it sends came before it, and saves no position: a connection cut meanwhile resumes from the same one,
//! going back half as far each time until one gets past it (down to 100 ms: any rewind keeps the events of
//! the topic the position's event came from; the overlap is for the others), then twice as far again after
//! each that does. What comes again is dropped by the stream's duplicate window, or past it by the publisher
//! ([`Publisher::guard_resend`]).
//!
//! Events that are not JSON are published too (bronze keeps everything), marked with a header and keyed by a
//! hash of their bytes. An oversize event (over `source.max_event_bytes`, or with its headers over what the
//! NATS server takes) is published as its first [`OVERSIZE_KEPT`] bytes, marked `oversize` with its size, so
//! the pipeline puts it in quarantine with that reason rather than losing it unseen.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use async_nats::HeaderMap;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::bus::publish::Outgoing;
use crate::bus::{CONFIRM_TIMEOUT, Positions, PublishStats, Publisher, StreamConfig, headers};
use crate::event::{EventShape, JsonPath, Layout, Parser, digest_id};
use crate::source::client::{Backoff, SourceError, SseClient, SseConfig, Times, rewind};
use crate::source::sse::{SseEvent, SseItem};

/// Ingest settings besides the source and the stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// The source's name: the key of its saved position, and a header on every message.
    pub name: String,
    /// The JSON path of the source event id (`Nats-Msg-Id`).
    pub id_path: String,
    /// Drop canary events (`meta.domain == "canary"`) at ingest instead of publishing them.
    pub drop_canary: bool,
    /// Publishes awaiting their ack at most; beyond it the reader waits.
    pub max_in_flight: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            name: "wikimedia-recentchange".into(),
            id_path: "meta.id".into(),
            drop_canary: false,
            max_in_flight: 4096,
        }
    }
}

/// Counters of the ingest, shared with the API.
#[derive(Debug, Default)]
pub struct IngestStats {
    pub received: AtomicU64,
    pub invalid_json: AtomicU64,
    pub invalid_utf8: AtomicU64,
    pub oversize: AtomicU64,
    pub canaries_dropped: AtomicU64,
    pub reconnects: AtomicU64,
    /// A connection to the source is open (while it is not, a quiet stream is not quiet: see
    /// `Processor::tick`).
    pub connected: AtomicBool,
    pub bytes: AtomicU64,
    /// Event time of the newest event received, ms since the epoch (for the lag behind the source).
    pub newest_event_ms: AtomicI64,
    pub publish: Arc<PublishStats>,
    /// What ended the last connection that failed, for the API: a source that answers 404 for ever is
    /// retried for ever (it may come back), and an operator should not need the logs to see why.
    pub last_failure: std::sync::Mutex<Option<SourceFailure>>,
}

/// A connection to the source that failed, and when the next one is tried (`None`: the ingest stopped on an
/// error retrying cannot fix).
#[derive(Clone, Debug, Serialize)]
pub struct SourceFailure {
    pub at_ms: i64,
    pub error: String,
    pub next_try_ms: Option<i64>,
}

impl IngestStats {
    /// Records, for the API, a connection that failed and when the next is tried (`None`: never).
    fn failed(&self, error: &dyn std::fmt::Display, retry_in: Option<Duration>) {
        let at_ms = now_ms();
        let failure = SourceFailure {
            at_ms,
            error: error.to_string(),
            // Saturating: a `Retry-After` is the server's to choose.
            next_try_ms: retry_in
                .map(|d| at_ms.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))),
        };
        // Also called while unwinding, where a second panic would abort the process.
        *self.last_failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(failure);
    }

    /// Events received whose outcome is known: stored, dropped as duplicates, or dropped as canaries.
    pub fn settled(&self) -> u64 {
        self.publish.published.load(Ordering::Relaxed)
            + self.publish.duplicates.load(Ordering::Relaxed)
            + self.canaries_dropped.load(Ordering::Relaxed)
    }

    /// How far behind the source's event time the ingest is, in ms (0 before the first event).
    pub fn lag_ms(&self) -> i64 {
        let newest = self.newest_event_ms.load(Ordering::Relaxed);
        if newest == 0 {
            0
        } else {
            (now_ms() - newest).max(0)
        }
    }
}

/// Records an ingest that panicked, which ends it as surely as an error does. Only when dropped while
/// unwinding: every other way out (a stop, an error, the future dropped at shutdown) is not a panic.
struct PanicGuard(Arc<IngestStats>);

impl Drop for PanicGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.connected.store(false, Ordering::Relaxed);
            self.0.failed(
                &"the ingest stopped: it panicked (the log says where)",
                None,
            );
        }
    }
}

/// The longest wait a `Retry-After` gets: a server's answer should not stop the source for days.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// How much of an oversize event its quarantine message keeps.
pub const OVERSIZE_KEPT: usize = 64 << 10;

/// The longest SSE id (or message id) an oversize marker carries as it is. An id can be as long as a line
/// (`max_line`, 1 MiB), and a marker carrying it would be as unpublishable as the event it stands for.
const MARKER_ID_MAX: usize = 1 << 10;

/// An event id as the `Nats-Msg-Id` header carries it: the id itself, or a digest of it when it holds a
/// control character (a header cannot hold a line break, and async-nats panics on one: `"meta":{"id":"a\nb"}`
/// would stop ingest at every restart) or is longer than [`MARKER_ID_MAX`]. The same id gives the same
/// header, so an event sent again is still dropped as a duplicate.
fn header_id(id: String) -> String {
    if id.len() <= MARKER_ID_MAX && !id.chars().any(char::is_control) {
        return id;
    }
    format!("id-{}", digest_id(id.as_bytes()))
}

/// Whether an SSE id can be sent back as `Last-Event-ID`: an HTTP header value (no control character but a
/// tab; the client refuses others) of a size servers take. Another, saved as the position, would be sent on
/// every connect after a restart and refused for ever.
fn resumable(id: &str) -> bool {
    id.len() <= 4 * MARKER_ID_MAX && id.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// `id` if it is short enough for a marker, else a digest of it (the same for the same id, so a marker sent
/// again is still dropped as a duplicate).
fn marker_id(id: String) -> String {
    if id.len() <= MARKER_ID_MAX {
        return id;
    }
    format!("oversize:{}", digest_id(id.as_bytes()))
}

pub struct Ingest {
    config: IngestConfig,
    client: SseClient,
    publisher: Publisher,
    positions: Positions,
    parser: Parser,
    canary: crate::event::Slot,
    stats: Arc<IngestStats>,
    /// The SSE id the last oversize event the parser skipped came after, and how many came after it: its
    /// marker's message id, the same when the source sends it again, another for the next one.
    oversize_after: (String, u32),
    /// While the source sends again what came before the position (after a rewound resume).
    resending: Option<Resending>,
    /// Whether the last connection resumed from before the position.
    rewound: bool,
    /// How far before a position of times a resume starts (`source.resume_overlap`).
    overlap: Duration,
    /// The stream's name (for [`Publisher::guard_resend`]).
    stream: String,
}

/// A resume from before the saved position, until the source is past it again.
struct Resending {
    /// The saved position's times: the event whose SSE id names them comes again, last.
    position: Times,
    /// Or an event later than this (the position's time plus the rewind) shows the source is past it.
    past_ms: i64,
    /// The last event sent again was the saved position's.
    at_position: bool,
}

/// The shortest rewind: enough for the topic the position's event came from (see [`rewind`]).
const MIN_REWIND: Duration = Duration::from_millis(100);

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Ingest {
    /// Connects everything: creates the stream when it is missing (one that exists keeps its settings: see
    /// [`StreamConfig::ensure_exists`]), opens the position bucket. Fails with a clear message when NATS or
    /// the configuration is wrong.
    pub async fn new(
        nats: async_nats::Client,
        source: SseConfig,
        stream: StreamConfig,
        config: IngestConfig,
    ) -> Result<Self> {
        source.validate().map_err(anyhow::Error::msg)?;
        source
            .check_overlap(stream.duplicate_window)
            .map_err(anyhow::Error::msg)?;
        let overlap = source.resume_overlap(stream.duplicate_window);
        let js = async_nats::jetstream::new(nats.clone());
        stream.ensure_exists(&js).await?;
        let positions = Positions::open(&js).await?;
        let stats = Arc::new(IngestStats::default());
        let publisher = Publisher::new(
            nats,
            stream.subject(),
            config.max_in_flight,
            positions.clone(),
            config.name.clone(),
            stats.publish.clone(),
        );
        let id =
            JsonPath::parse(&config.id_path).map_err(|e| anyhow::anyhow!("ingest.id_path: {e}"))?;
        let shape = EventShape {
            id,
            ..EventShape::default()
        };
        let domain = JsonPath::parse("meta.domain").expect("a valid path");
        let layout = Arc::new(Layout::new(&shape, [&domain], []).map_err(anyhow::Error::msg)?);
        let canary = layout.slot("meta.domain").expect("in the layout");
        Ok(Ingest {
            client: SseClient::new(source)?,
            publisher,
            positions,
            parser: Parser::new(layout),
            canary,
            stats,
            oversize_after: (String::new(), 0),
            resending: None,
            rewound: false,
            overlap,
            stream: stream.name.clone(),
            config,
        })
    }

    pub fn stats(&self) -> &Arc<IngestStats> {
        &self.stats
    }

    /// Runs until `stop` resolves (then flushes and saves the position), or fails on an error that retrying
    /// cannot fix (also recorded for the API: the pipeline goes on without its ingest).
    pub async fn run(&mut self, stop: impl std::future::Future<Output = ()>) -> Result<()> {
        let _panic = PanicGuard(self.stats.clone());
        let ran = self.run_until_stopped(stop).await;
        if let Err(e) = &ran {
            self.stats
                .failed(&format_args!("the ingest stopped: {e:#}"), None);
        }
        ran
    }

    async fn run_until_stopped(
        &mut self,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<()> {
        tokio::pin!(stop);
        let mut position = self.positions.get(&self.config.name).await?;
        if let Some(p) = &position {
            tracing::info!(source = %self.config.name, position = %p, "resuming the source");
        }
        let config = self.client.config().clone();
        let mut backoff = Backoff::new(config.min_backoff, config.max_backoff);
        let mut items = Vec::new();
        let mut rewind = self.overlap;
        loop {
            let received = self.stats.received.load(Ordering::Relaxed);
            let stored = self.stats.publish.published.load(Ordering::Relaxed);
            let outcome = tokio::select! {
                _ = &mut stop => None,
                outcome = self.connection(position.as_deref(), rewind, &mut backoff, &mut items) => Some(outcome),
            };
            // The guard holds ids the stream has: whatever the connection sent later with one of them was a
            // duplicate too, so it is kept to the connection's end.
            self.publisher.end_resend_guard();
            self.resending = None;
            self.stats.connected.store(false, Ordering::Relaxed);
            let Some(outcome) = outcome else {
                self.flush_on_stop().await?;
                tracing::info!(source = %self.config.name, "ingest stopped");
                return Ok(());
            };
            // Why the connection ended goes to the API at once: the flush below waits for NATS, which may be
            // away too. The next try is due that long after now, the flush's wait counted in.
            let delay = match &outcome {
                Ok(healthy) => {
                    if *healthy {
                        backoff.reset();
                    }
                    let delay = backoff.next_delay();
                    if !healthy {
                        // A source that takes the connection and closes it at once, again and again.
                        self.stats.failed(
                            &format_args!(
                                "the source closed the stream within {:?} of opening it",
                                config.healthy_after
                            ),
                            Some(delay),
                        );
                    }
                    tracing::info!(source = %self.config.name, "the source closed the stream; reconnecting");
                    delay
                }
                Err(
                    e @ SourceError::Status {
                        status,
                        retry_after,
                        ..
                    },
                ) if status.as_u16() == 429 => {
                    let delay = retry_after
                        .unwrap_or(config.rate_limited_backoff)
                        .clamp(config.min_backoff, MAX_RETRY_AFTER.max(config.min_backoff));
                    tracing::warn!(source = %self.config.name, "{e}; waiting {delay:?}");
                    self.stats.failed(e, Some(delay));
                    delay
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(source = %self.config.name, "{e}; reconnecting in {delay:?}");
                    self.stats.failed(e, Some(delay));
                    delay
                }
            };
            let next_try = tokio::time::Instant::now()
                .checked_add(delay)
                .unwrap_or_else(|| tokio::time::Instant::now() + MAX_RETRY_AFTER);
            // Whatever ended the connection, what was sent is acked before deciding what comes next; a stop
            // meanwhile (NATS may be away too) waits for it only as long as any stop does.
            let flushed = tokio::select! {
                _ = &mut stop => None,
                flushed = self.publisher.flush() => Some(flushed),
            };
            let Some(flushed) = flushed else {
                self.flush_on_stop().await?;
                tracing::info!(source = %self.config.name, "ingest stopped");
                return Ok(());
            };
            flushed?;
            if let Some(p) = self.publisher.acked_position() {
                position = Some(p.to_string());
            }
            // A rewound connection that brought events, none of them new, was cut before the source was past
            // the position again: the next goes back half as far, so a source that cuts connections sooner than
            // it sends the overlap again is still read through. One that stored new events lets the next go
            // back twice as far again, up to the overlap. One that failed or brought nothing says nothing.
            let new = self.stats.publish.published.load(Ordering::Relaxed) > stored;
            let any = self.stats.received.load(Ordering::Relaxed) > received;
            rewind = match (new, self.rewound && any) {
                (true, _) => (rewind * 2).min(self.overlap),
                (false, true) => (rewind / 2).max(MIN_REWIND),
                (false, false) => rewind,
            };
            self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
            tokio::select! {
                _ = &mut stop => {
                    self.flush_on_stop().await?;
                    return Ok(());
                }
                _ = tokio::time::sleep_until(next_try) => {}
            }
        }
    }

    /// The flush of a stop, which waits for the server only [`CONFIRM_TIMEOUT`]: a server that went away first
    /// held the stop forever. The saved position covers only what the stream confirmed, so the next start
    /// reads the rest from the source again.
    async fn flush_on_stop(&mut self) -> Result<()> {
        match tokio::time::timeout(CONFIRM_TIMEOUT, self.publisher.flush()).await {
            Ok(flushed) => flushed,
            Err(_) => {
                tracing::warn!(
                    source = %self.config.name,
                    "NATS did not confirm the last events within {CONFIRM_TIMEOUT:?}: the next start reads them from the source again"
                );
                Ok(())
            }
        }
    }

    /// One connection: reads and publishes until it ends. `Ok(healthy)` when the server closed the stream,
    /// `healthy` when it had stayed up long enough to reset the backoff.
    async fn connection(
        &mut self,
        position: Option<&str>,
        rewind_by: Duration,
        backoff: &mut Backoff,
        items: &mut Vec<SseItem>,
    ) -> Result<bool, SourceError> {
        let rewound = position
            .filter(|_| !rewind_by.is_zero())
            .and_then(|p| Some((p, rewind(p, rewind_by)?)));
        self.rewound = rewound.is_some();
        let mut conn = match &rewound {
            Some((position, (rewound, _))) => {
                self.client.connect(Some(rewound)).await?.after(position)
            }
            None => self.client.connect(position).await?,
        };
        if let Some((position, (rewound, times))) = rewound {
            tracing::debug!(source = %self.config.name, %position, resume = %rewound, "resuming {rewind_by:?} before the position");
            let time = times.latest();
            // Connected (the source is up): what it sends first may be past the stream's duplicate window.
            if let Err(e) = self
                .publisher
                .guard_resend(
                    &self.stream,
                    time.saturating_sub(rewind_by.as_millis() as i64),
                    rewind_by,
                )
                .await
            {
                tracing::warn!(
                    source = %self.config.name,
                    "cannot read back what the stream holds ({e:#}): if its duplicate window has passed, what the \
                     source sends again is stored twice (the pipeline's dedupe stage drops it from silver)"
                );
            }
            self.resending = Some(Resending {
                past_ms: time.saturating_add(rewind_by.as_millis() as i64),
                position: times,
                at_position: false,
            });
        }
        self.stats.connected.store(true, Ordering::Relaxed);
        // The source sends again from `position`: its oversize events get the same marker ids as before.
        self.oversize_after = (String::new(), 0);
        let healthy_after = self.client.config().healthy_after;
        loop {
            items.clear();
            let before = conn.bytes;
            let open = conn.read(items).await;
            self.stats
                .bytes
                .fetch_add(conn.bytes - before, Ordering::Relaxed);
            for item in items.drain(..) {
                match item {
                    SseItem::Event(event) => {
                        if let Err(e) = self.event(event).await {
                            // Publishing never gives up (it retries); an error here is a bug or a shutdown.
                            tracing::error!("cannot publish: {e:#}");
                        }
                    }
                    SseItem::Retry(ms) => backoff.set_base(Duration::from_millis(ms)),
                    SseItem::Comment(_) => {}
                    SseItem::Oversize {
                        bytes,
                        last_event_id,
                    } => {
                        // The parser kept none of it (its memory stays bounded).
                        let detail = format!(
                            "an event of {bytes} bytes, over source.max_event_bytes (its data is not kept)"
                        );
                        let n = match &mut self.oversize_after {
                            (after, n) if *after == last_event_id => {
                                *n += 1;
                                *n
                            }
                            after => {
                                *after = (last_event_id.clone(), 0);
                                0
                            }
                        };
                        let id = format!("oversize:{last_event_id}:{n}:{bytes}");
                        if let Err(e) = self.oversize(id, detail, &last_event_id, "").await {
                            tracing::error!("cannot publish: {e:#}");
                        }
                    }
                }
            }
            match open {
                Ok(true) => {}
                Ok(false) => return Ok(conn.age() >= healthy_after),
                Err(e) => {
                    if conn.age() >= healthy_after {
                        backoff.reset();
                    }
                    return Err(e);
                }
            }
        }
    }

    async fn event(&mut self, event: SseEvent) -> Result<()> {
        self.stats.received.fetch_add(1, Ordering::Relaxed);
        let received_ms = now_ms();
        let payload = Bytes::from(event.data);
        let mut headers = HeaderMap::new();
        headers.insert(headers::SSE_ID, event.last_event_id.as_str());
        headers.insert(headers::INGEST_MS, received_ms.to_string().as_str());
        headers.insert(headers::SOURCE, self.config.name.as_str());
        if event.invalid_utf8 {
            self.stats.invalid_utf8.fetch_add(1, Ordering::Relaxed);
            headers.insert(headers::INVALID_UTF8, "replaced");
        }
        let id = match self.parser.parse(payload.clone(), received_ms) {
            Ok(parsed) => {
                if self.config.drop_canary
                    && matches!(
                        parsed.value(self.canary),
                        Some(crate::runtime::types::ValueRef::Text("canary"))
                    )
                {
                    self.stats.canaries_dropped.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                if !parsed.attributes.iter().any(|(k, _)| k == "time.source") {
                    self.stats
                        .newest_event_ms
                        .fetch_max(parsed.time_ms, Ordering::Relaxed);
                }
                parsed.id
            }
            Err(rejected) => {
                self.stats.invalid_json.fetch_add(1, Ordering::Relaxed);
                headers.insert(headers::REJECTED, rejected.reason);
                String::new()
            }
        };
        // Not JSON, or an empty id: named by its bytes, as an event without an id is.
        let id = if id.is_empty() {
            digest_id(&payload)
        } else {
            header_id(id)
        };
        let message = Outgoing {
            id,
            payload,
            headers,
            position: self.position(&event.last_event_id),
        };
        // Repairing bad UTF-8 and the headers can take an event under `max_event_bytes` past what the server
        // takes: sent, it would be refused for ever, and hold up every event after it.
        if let Some((size, max)) = self.publisher.too_big(&message) {
            let detail = format!(
                "an event of {size} bytes with its headers, over the NATS server's max_payload of {max} \
                 (its first {OVERSIZE_KEPT} bytes are kept)"
            );
            let data = String::from_utf8_lossy(&message.payload).into_owned();
            let sse_id = message.position.unwrap_or_default();
            return self.oversize(message.id, detail, &sse_id, &data).await;
        }
        self.publisher.publish(message).await.context("publish")
    }

    /// The position an event's SSE id saves once the event is acked: none for an empty id, nor (with a
    /// warning) for one that cannot be sent back as `Last-Event-ID` (see [`resumable`]): a restart then
    /// resumes from the position before, and what comes again is dropped as duplicates. None either while the
    /// source sends again what came before the saved position: saved, it would move the position back, and
    /// each cut would resume further back.
    fn position(&mut self, sse_id: &str) -> Option<String> {
        if sse_id.is_empty() {
            return None;
        }
        if let Some(resending) = &mut self.resending {
            let times = Times::of(sse_id);
            let past = resending.at_position
                || times
                    .as_ref()
                    .is_some_and(|t| t.latest() > resending.past_ms);
            if !past {
                // The saved position's own event is the last to come again: what follows it is new. (Another
                // with the same times may come first: what follows that saves older positions, which a resume
                // from still loses nothing, see `rewind`.)
                resending.at_position = times.is_some_and(|t| resending.position.within(&t));
                return None;
            }
            self.resending = None;
        }
        if !resumable(sse_id) {
            tracing::warn!(
                source = %self.config.name,
                "an SSE id that cannot be sent back as Last-Event-ID ({} bytes, or a control character) is not \
                 saved as the position: a restart resumes from the one before",
                sse_id.len()
            );
            return None;
        }
        Some(sse_id.to_string())
    }

    /// Publishes the start of an oversize event, marked so that the pipeline quarantines it as `oversize`.
    async fn oversize(
        &mut self,
        id: String,
        detail: String,
        sse_id: &str,
        data: &str,
    ) -> Result<()> {
        self.stats.oversize.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(source = %self.config.name, after = %sse_id, "oversize: {detail}");
        // Half the server's limit leaves room for the headers, whatever that limit is.
        let mut kept = OVERSIZE_KEPT
            .min(self.publisher.max_payload() / 2)
            .min(data.len());
        while !data.is_char_boundary(kept) {
            kept -= 1;
        }
        // An SSE id too long to carry is left out, and not saved as the position: a restart then reads from the
        // position before, and what it sends again is dropped as duplicates.
        let sse_id = Some(sse_id)
            .filter(|id| id.len() <= MARKER_ID_MAX)
            .and_then(|id| self.position(id));
        let mut headers = HeaderMap::new();
        headers.insert(headers::SSE_ID, sse_id.as_deref().unwrap_or(""));
        headers.insert(headers::INGEST_MS, now_ms().to_string().as_str());
        headers.insert(headers::SOURCE, self.config.name.as_str());
        headers.insert(headers::REJECTED, "oversize");
        headers.insert(headers::REJECTED_DETAIL, detail.as_str());
        self.publisher
            .publish(Outgoing {
                id: marker_id(id),
                payload: Bytes::copy_from_slice(&data.as_bytes()[..kept]),
                headers,
                position: sse_id,
            })
            .await
            .context("publish")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The guard lives in the ingest's future across awaits: a panic drops it while unwinding (and a task
    /// dropped at shutdown, not panicking, records nothing).
    #[tokio::test]
    async fn a_panicking_ingest_is_recorded_and_a_dropped_one_is_not() {
        let stats = Arc::new(IngestStats::default());
        stats.connected.store(true, Ordering::Relaxed);
        let guarded = stats.clone();
        let task = tokio::spawn(async move {
            let _panic = PanicGuard(guarded);
            tokio::task::yield_now().await;
            panic!("an ingest bug");
        });
        assert!(task.await.unwrap_err().is_panic());
        assert!(!stats.connected.load(Ordering::Relaxed));
        let failure = stats.last_failure.lock().unwrap().clone().unwrap();
        assert!(failure.error.contains("panicked"), "{failure:?}");
        assert_eq!(failure.next_try_ms, None);

        let stats = Arc::new(IngestStats::default());
        stats.connected.store(true, Ordering::Relaxed);
        let guarded = stats.clone();
        let task = tokio::spawn(async move {
            let _panic = PanicGuard(guarded);
            std::future::pending::<()>().await;
        });
        tokio::task::yield_now().await;
        task.abort();
        assert!(task.await.unwrap_err().is_cancelled());
        assert!(stats.last_failure.lock().unwrap().is_none());
    }

    #[test]
    fn a_marker_id_stays_publishable_and_stable() {
        assert_eq!(marker_id("oversize:42:0:9000".into()), "oversize:42:0:9000");
        let long = "7".repeat(1 << 20);
        let id = marker_id(long.clone());
        assert!(id.len() < 64, "{id}");
        assert_eq!(id, marker_id(long), "the same id twice");
    }

    #[test]
    fn ids_a_header_cannot_carry_become_stable_digests() {
        assert_eq!(header_id("4b2e-uuid".into()), "4b2e-uuid");
        for odd in ["a\nb", "a\rb", "a\u{0}b", &"7".repeat(MARKER_ID_MAX + 1)] {
            let id = header_id(odd.to_string());
            assert!(id.starts_with("id-sha256:") && id.len() < 64, "{id}");
            assert_eq!(id, header_id(odd.to_string()), "the same id twice");
        }
        assert!(resumable(
            r#"[{"topic":"eqiad.mediawiki.recentchange","partition":0,"offset":-1}]"#
        ));
        assert!(!resumable("a\u{1}b"));
        assert!(!resumable(&"7".repeat(8 * MARKER_ID_MAX)));
    }
}
