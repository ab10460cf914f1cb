//! Publishing ingested events to JetStream in order, with a bounded number of acks in flight, and keeping a
//! durable record of how far the source has been published.
//!
//! - Every message carries `Nats-Msg-Id` (the source event id), so a message sent twice within the stream's
//!   duplicate window is stored once: replays after a reconnect or a restart are harmless.
//! - At most `max_in_flight` messages wait for their ack; the caller awaits the oldest before sending more, so
//!   a slow server slows the reader all the way to the source socket.
//! - When an ack fails (timeout, lost connection), everything not yet acked is sent again, in order, with the
//!   same ids, until the server has them: what arrived before is dropped as a duplicate, so the stream ends up
//!   with each event once and in arrival order.
//! - A server that crashes loses what it had acked but not yet written: JetStream's file store coalesces
//!   writes for a few milliseconds. So the newest `max_in_flight` acked messages are kept too, and after a
//!   failed ack or a reconnect the publisher reads the stream back from the oldest of them; those it no
//!   longer holds are sent again ahead of the unacked ones. Only then is the order not kept: messages the
//!   client queued while the server was down reach the new server before the lost ones are found.
//! - The source position (the SSE id) of the newest acked event is saved in a JetStream key-value bucket, so a
//!   restarted host resumes where it left off.
//! - A resume from before that position (see `ingest`) sends again what the stream holds already. Past the
//!   duplicate window the stream would store it twice, so the publisher then reads back the ids it holds and
//!   drops those messages itself ([`Publisher::guard_resend`]).

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use async_nats::HeaderMap;
use async_nats::jetstream::{self, context::PublishAckFuture, kv};
use bytes::Bytes;
use futures::StreamExt;

/// A message ready to publish.
#[derive(Clone, Debug)]
pub struct Outgoing {
    /// The dedupe id (`Nats-Msg-Id`).
    pub id: String,
    pub payload: Bytes,
    pub headers: HeaderMap,
    /// The source position this message completes (its SSE id), recorded once it is acked.
    pub position: Option<String>,
}

/// Counters shared with whoever reports them (logs, metrics endpoint).
#[derive(Debug, Default)]
pub struct PublishStats {
    /// Messages stored by the server.
    pub published: AtomicU64,
    /// Messages the server dropped as duplicates (replays, redeliveries by the source).
    pub duplicates: AtomicU64,
    /// Messages sent again after a failed ack.
    pub resent: AtomicU64,
    pub bytes: AtomicU64,
}

/// Where each source has been published up to, in a key-value bucket (`weir_positions`).
#[derive(Clone)]
pub struct Positions {
    kv: kv::Store,
}

impl Positions {
    pub const BUCKET: &'static str = "weir_positions";

    pub async fn open(js: &jetstream::Context) -> Result<Self> {
        let kv = match js.get_key_value(Self::BUCKET).await {
            Ok(kv) => kv,
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: Self::BUCKET.into(),
                    description: "Where Weir has published each source up to".into(),
                    history: 5,
                    ..Default::default()
                })
                .await
                .context("cannot create the key-value bucket for source positions")?,
        };
        Ok(Positions { kv })
    }

    pub async fn get(&self, source: &str) -> Result<Option<String>> {
        let value = self
            .kv
            .get(super::kv_key(source))
            .await
            .with_context(|| format!("cannot read the position of source {source}"))?;
        Ok(value.map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    pub async fn set(&self, source: &str, position: &str) -> Result<()> {
        self.kv
            .put(
                super::kv_key(source),
                Bytes::copy_from_slice(position.as_bytes()),
            )
            .await
            .with_context(|| format!("cannot save the position of source {source}"))?;
        Ok(())
    }
}

/// A sent message's ack, polled without waiting between sends (see [`Publisher::settle_ready`]).
type AckFuture = <PublishAckFuture as std::future::IntoFuture>::IntoFuture;

struct InFlight {
    message: Outgoing,
    ack: Option<AckFuture>,
    /// Acked before, by a server that then lost its newest messages: counted in the stats already.
    recovered: bool,
}

/// A message the server acked, kept until newer acks push it out in case the server loses it.
struct Acked {
    message: Outgoing,
    sequence: u64,
}

/// How long to wait before sending again after `failures` failed acks in a row: nothing at the first (a lost
/// connection's acks fail together), then 100 ms doubling up to 10 s.
fn ack_failed_wait(failures: u32) -> Duration {
    match failures {
        0 => Duration::ZERO,
        n => (Duration::from_millis(100) * 2u32.pow((n - 1).min(7))).min(Duration::from_secs(10)),
    }
}

pub struct Publisher {
    js: jetstream::Context,
    subject: String,
    max_in_flight: usize,
    in_flight: VecDeque<InFlight>,
    /// The newest acked messages, oldest first, at most `max_in_flight`.
    acked: VecDeque<Acked>,
    /// The stream the subject's messages are stored in (from the first ack).
    stream: Option<String>,
    /// The client's counters: `connects` tells a reconnect (read on every publish, so kept, not asked for).
    client_stats: Arc<async_nats::Statistics>,
    /// The client's connection count when the stream was last known to hold every acked message.
    connects: u64,
    positions: Positions,
    source: String,
    /// The newest position acked, and whether it is saved.
    acked_position: Option<String>,
    saved: bool,
    last_save: Instant,
    save_every: Duration,
    stats: Arc<PublishStats>,
    /// Publish acks failed in a row: each round of sending again waits longer (see [`ack_failed_wait`]).
    ack_failures: u32,
    /// Ids the stream holds but would no longer drop as duplicates: messages with them are dropped here (see
    /// [`Publisher::guard_resend`]).
    known: HashSet<String>,
}

/// How many of the subject's newest messages a resend guard reads back at most (~6,000 come again after a
/// minute's overlap at the live stream's rate).
const GUARD_MAX: u64 = 100_000;

impl Publisher {
    /// Publishes through a JetStream context of its own. async-nats lets a context have at most 5,000 acks
    /// pending by default and makes a send wait for one to settle; but the publisher holds its pending acks
    /// unpolled, and after a reconnect sends `max_in_flight` unacked plus up to `max_in_flight` lost
    /// messages before it waits on any. A shared or default context could so wait for ever.
    pub fn new(
        client: async_nats::Client,
        subject: impl Into<String>,
        max_in_flight: usize,
        positions: Positions,
        source: impl Into<String>,
        stats: Arc<PublishStats>,
    ) -> Self {
        let max_in_flight = max_in_flight.max(1);
        let js = jetstream::context::ContextBuilder::new()
            .max_ack_inflight(2 * max_in_flight)
            .build(client);
        let client_stats = js.client().statistics();
        let connects = client_stats.connects.load(Ordering::Relaxed);
        Publisher {
            js,
            subject: subject.into(),
            max_in_flight,
            in_flight: VecDeque::new(),
            acked: VecDeque::new(),
            stream: None,
            client_stats,
            connects,
            positions,
            source: source.into(),
            acked_position: None,
            saved: true,
            last_save: Instant::now(),
            save_every: Duration::from_secs(1),
            stats,
            ack_failures: 0,
            known: HashSet::new(),
        }
    }

    pub fn stats(&self) -> &Arc<PublishStats> {
        &self.stats
    }

    /// Whether `message` is too big for the server (its `max_payload`, 1 MiB by default): the client refuses
    /// it, every time, so it must not be sent. Counts the headers as NATS frames them, with the
    /// `Nats-Msg-Id` a send adds.
    pub fn too_big(&self, message: &Outgoing) -> Option<(usize, usize)> {
        let framing = |name: &str, value: &str| name.len() + value.len() + 4;
        let headers: usize = message
            .headers
            .iter()
            .flat_map(|(name, values)| values.iter().map(|v| framing(name.as_ref(), v.as_str())))
            .sum();
        let size = "NATS/1.0\r\n\r\n".len()
            + headers
            + framing(async_nats::header::NATS_MESSAGE_ID.as_ref(), &message.id)
            + message.payload.len();
        let max = self.max_payload();
        (size > max).then_some((size, max))
    }

    /// The largest message the server takes, in bytes (its `max_payload`).
    pub fn max_payload(&self) -> usize {
        self.js.client().max_payload()
    }

    /// The newest source position whose event the server has acked.
    pub fn acked_position(&self) -> Option<&str> {
        self.acked_position.as_deref()
    }

    /// Before the source sends again what came from `since_ms` on (its log's time) up to the saved position.
    /// The stream drops what comes again as duplicates only within its duplicate window of the first storing,
    /// so when the oldest of the subject's messages that may come again is older than that window less
    /// `rewind` (a host down for longer), the ids of those messages are read back, and messages with them are
    /// dropped here until [`Publisher::end_resend_guard`]: each is a duplicate, the stream has its id.
    ///
    /// Which messages may come again: those stored from `since_ms` on, less `rewind` and a minute for events
    /// out of time order and clocks apart, and at most the subject's newest [`GUARD_MAX`] (a host catching up
    /// on old events stores them long after their time: what comes again is what it stored last).
    pub async fn guard_resend(
        &mut self,
        stream: &str,
        since_ms: i64,
        rewind: Duration,
    ) -> Result<()> {
        use async_nats::jetstream::consumer::DeliverPolicy;
        use async_nats::jetstream::stream::LastRawMessageErrorKind;
        self.known.clear();
        let mut handle = self.js.get_stream(stream).await?;
        let window = handle.info().await?.config.duplicate_window;
        let newest = match handle.get_last_raw_message_by_subject(&self.subject).await {
            Ok(newest) => newest,
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let from_ms =
            since_ms.saturating_sub((rewind + Duration::from_secs(60)).as_millis() as i64);
        let start_time = async_nats::datetime::from_nanos(from_ms.max(0) as i128 * 1_000_000)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut consumer = reader(
            &handle,
            &self.subject,
            DeliverPolicy::ByStartTime { start_time },
        )
        .await?;
        if consumer.cached_info().num_pending > GUARD_MAX {
            let start_sequence = newest.sequence.saturating_sub(GUARD_MAX).max(1);
            forget(&handle, &consumer.cached_info().name).await;
            consumer = reader(
                &handle,
                &self.subject,
                DeliverPolicy::ByStartSequence { start_sequence },
            )
            .await?;
        }
        let now = async_nats::datetime::now().unix_timestamp_nanos();
        let mut oldest = Duration::ZERO;
        let past_window = |first: &jetstream::Message| {
            let stored = first
                .info()
                .map_or(now, |i| i.published.unix_timestamp_nanos());
            oldest = Duration::from_nanos((now - stored).max(0) as u64);
            oldest + rewind + Duration::from_secs(5) >= window
        };
        self.known = read_ids(&handle, consumer, past_window).await?;
        if !self.known.is_empty() {
            tracing::info!(
                subject = %self.subject,
                "what the source sends again was first stored up to {oldest:?} ago, past the stream's duplicate \
                 window of {window:?}: {} ids read back so that none is stored twice",
                self.known.len()
            );
        }
        Ok(())
    }

    /// Ends a guard (at the end of the connection it was read back for).
    pub fn end_resend_guard(&mut self) {
        self.known = HashSet::new();
    }

    /// Sends a message; waits for the oldest ack first when `max_in_flight` are pending.
    pub async fn publish(&mut self, message: Outgoing) -> Result<()> {
        if !self.known.is_empty() && self.known.contains(&message.id) {
            self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        if self.reconnected() {
            // The server may have restarted after a crash: check before anything new is stored after it.
            self.resend_all().await?;
        }
        while self.in_flight.len() >= self.max_in_flight {
            self.settle_oldest().await?;
        }
        let ack = self.send(&message).await;
        let failed = ack.is_err();
        self.in_flight.push_back(InFlight {
            message,
            ack: ack.ok(),
            recovered: false,
        });
        if failed {
            self.resend_all().await?;
        }
        self.settle_ready().await?;
        if self.last_save.elapsed() >= self.save_every {
            self.save_position().await?;
        }
        Ok(())
    }

    /// Waits until every message sent is acked, and saves the position.
    pub async fn flush(&mut self) -> Result<()> {
        loop {
            while !self.in_flight.is_empty() {
                self.settle_oldest().await?;
            }
            // Acked through a new connection: the server may have lost older acked messages in a crash.
            if !self.reconnected() {
                break;
            }
            self.resend_all().await?;
        }
        // The last save before a stop: worth a few tries (a server just restarted can be slow to answer).
        let mut delay = Duration::from_millis(200);
        for _ in 0..5 {
            self.save_position().await?;
            if self.saved {
                break;
            }
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
        Ok(())
    }

    // `&mut self`, as every method that waits here: the ack futures are `Send` but not `Sync`.
    async fn send(
        &mut self,
        message: &Outgoing,
    ) -> Result<AckFuture, async_nats::jetstream::context::PublishError> {
        let mut publish = jetstream::message::PublishMessage::build()
            .payload(message.payload.clone())
            .message_id(&message.id);
        for (name, values) in message.headers.iter() {
            for value in values {
                publish = publish.header(name.clone(), value.clone());
            }
        }
        let ack = self.js.send_publish(self.subject.clone(), publish).await?;
        Ok(std::future::IntoFuture::into_future(ack))
    }

    /// Takes in the acks that have come already, oldest first, without waiting: the saved position and the
    /// counters keep up with the server rather than trailing it by `max_in_flight` messages (which a crash
    /// then long enough for the duplicate window to pass would have stored twice).
    async fn settle_ready(&mut self) -> Result<()> {
        use futures::FutureExt;
        while let Some(front) = self.in_flight.front_mut()
            && let Some(ack) = front.ack.as_mut()
            && let Some(result) = ack.now_or_never()
        {
            front.ack = None;
            self.settled(result.map_err(|e| e.to_string())).await?;
        }
        Ok(())
    }

    async fn settle_oldest(&mut self) -> Result<()> {
        let Some(front) = self.in_flight.front_mut() else {
            return Ok(());
        };
        let result = match front.ack.take() {
            Some(ack) => ack.await.map_err(|e| e.to_string()),
            None => Err("not sent".to_string()),
        };
        self.settled(result).await
    }

    /// Takes in the outcome of the oldest message's ack.
    async fn settled(
        &mut self,
        result: Result<jetstream::publish::PublishAck, String>,
    ) -> Result<()> {
        match result {
            Ok(ack) => {
                self.ack_failures = 0;
                let done = self.in_flight.pop_front().expect("front exists");
                // A recovered message was counted when it was first acked.
                if !done.recovered {
                    if ack.duplicate {
                        self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                    } else {
                        self.stats.published.fetch_add(1, Ordering::Relaxed);
                        self.stats
                            .bytes
                            .fetch_add(done.message.payload.len() as u64, Ordering::Relaxed);
                    }
                }
                if let Some(position) = &done.message.position {
                    self.acked_position = Some(position.clone());
                    self.saved = false;
                }
                if self.acked.len() >= self.max_in_flight {
                    self.acked.pop_front();
                }
                self.acked.push_back(Acked {
                    message: done.message,
                    sequence: ack.sequence,
                });
                if self.stream.is_none() {
                    self.stream = Some(ack.stream);
                }
                Ok(())
            }
            Err(e) => {
                // A refusal (the store full, a message over the stream's size limit) comes back at once:
                // sent again at once, it would spin, resending up to `max_in_flight` messages each round.
                let wait = ack_failed_wait(self.ack_failures);
                self.ack_failures = self.ack_failures.saturating_add(1);
                tracing::warn!(
                    subject = %self.subject,
                    "publish ack failed ({e}); sending the unacked messages again in {wait:?}"
                );
                tokio::time::sleep(wait).await;
                self.resend_all().await
            }
        }
    }

    /// How many times the client has connected to a server so far.
    fn connects(&self) -> u64 {
        self.client_stats.connects.load(Ordering::Relaxed)
    }

    /// Whether the client has connected again since the stream was last checked.
    fn reconnected(&self) -> bool {
        self.connects() != self.connects
    }

    /// Sends every unacked message again, in order, until each has an ack future; waits out the acks of the
    /// earlier sends first so the new sends come after them. Acked messages the server lost go first.
    async fn resend_all(&mut self) -> Result<()> {
        // All at once: each ack lost with a dead connection takes the whole ack timeout to give up.
        let pending = self
            .in_flight
            .iter_mut()
            .filter_map(|entry| entry.ack.take());
        futures::future::join_all(pending).await;
        self.recover_lost().await;
        let mut delay = Duration::from_millis(100);
        let mut i = 0;
        while i < self.in_flight.len() {
            let message = self.in_flight[i].message.clone();
            match self.send(&message).await {
                Ok(ack) => {
                    self.in_flight[i].ack = Some(ack);
                    self.stats.resent.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
                Err(e) => {
                    tracing::warn!(subject = %self.subject, "cannot publish ({e}); retrying in {delay:?}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        }
        Ok(())
    }

    /// Puts the kept acked messages the stream no longer holds back in front of the unacked ones (a server
    /// crash lost them). Waits until the server answers: nothing can be published before that anyway.
    async fn recover_lost(&mut self) {
        let mut delay = Duration::from_millis(100);
        let present = loop {
            let connects = self.connects();
            match self.stored_ids().await {
                Ok(present) => {
                    self.connects = connects;
                    break present;
                }
                Err(e) => {
                    tracing::warn!(subject = %self.subject, "cannot check the stream for lost messages ({e:#}); retrying in {delay:?}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        };
        let lost: Vec<Acked> = self
            .acked
            .drain(..)
            .filter(|a| !present.contains(&a.message.id))
            .collect();
        if lost.is_empty() {
            return;
        }
        tracing::warn!(
            subject = %self.subject,
            "the stream lost {} acked messages (a server crash before they were written); sending them again",
            lost.len()
        );
        for acked in lost.into_iter().rev() {
            self.in_flight.push_front(InFlight {
                message: acked.message,
                ack: None,
                recovered: true,
            });
        }
    }

    /// The ids of the messages the stream holds from the oldest kept acked message on. Every kept message is
    /// looked up, not only the newest: messages the client queued while the server was down may have been
    /// stored (and acked) in the place of lost ones.
    async fn stored_ids(&mut self) -> Result<HashSet<String>> {
        use async_nats::jetstream::consumer::DeliverPolicy;
        let (Some(stream), Some(first)) =
            (&self.stream, self.acked.iter().map(|a| a.sequence).min())
        else {
            return Ok(HashSet::new());
        };
        let stream = self.js.get_stream(stream).await?;
        let policy = DeliverPolicy::ByStartSequence {
            start_sequence: first,
        };
        read_ids(
            &stream,
            reader(&stream, &self.subject, policy).await?,
            |_| true,
        )
        .await
    }

    async fn save_position(&mut self) -> Result<()> {
        self.last_save = Instant::now();
        if self.saved {
            return Ok(());
        }
        if let Some(position) = &self.acked_position
            && let Err(e) = self.positions.set(&self.source, position).await
        {
            // Not fatal: the position only spares a restart from re-reading what is in the stream already
            // (which the stream's duplicate window drops). The next save tries again.
            tracing::warn!(source = %self.source, "{e:#}; will try again");
            return Ok(());
        }
        self.saved = true;
        Ok(())
    }
}

/// A headers-only reader of `subject`'s messages in `stream` from `start` on.
async fn reader(
    stream: &jetstream::stream::Stream,
    subject: &str,
    start: jetstream::consumer::DeliverPolicy,
) -> Result<jetstream::consumer::Consumer<jetstream::consumer::pull::OrderedConfig>> {
    use async_nats::jetstream::consumer::pull::OrderedConfig;
    Ok(stream
        .create_consumer(OrderedConfig {
            filter_subject: subject.to_string(),
            deliver_policy: start,
            headers_only: true,
            ..Default::default()
        })
        .await?)
}

/// Deletes a reader at once, rather than leaving it to the server's 30 s of inactivity (a source that cuts
/// connections often would leave one per resume).
async fn forget(stream: &jetstream::stream::Stream, name: &str) {
    let _ = stream.delete_consumer(name).await;
}

/// The `Nats-Msg-Id`s of the messages `consumer` (a [`reader`] of `stream`) has pending, read to the last; none
/// when `go_on` refuses the first. The reader is deleted after.
async fn read_ids(
    stream: &jetstream::stream::Stream,
    consumer: jetstream::consumer::Consumer<jetstream::consumer::pull::OrderedConfig>,
    go_on: impl FnOnce(&jetstream::Message) -> bool,
) -> Result<HashSet<String>> {
    let name = consumer.cached_info().name.clone();
    let read = read_pending(consumer, go_on).await;
    forget(stream, &name).await;
    read
}

async fn read_pending(
    consumer: jetstream::consumer::Consumer<jetstream::consumer::pull::OrderedConfig>,
    go_on: impl FnOnce(&jetstream::Message) -> bool,
) -> Result<HashSet<String>> {
    let mut present = HashSet::new();
    // Up to the subject's last message, by what the consumer has pending: the stream's own last sequence
    // may be another subject's, or purged, and would never come.
    if consumer.cached_info().num_pending == 0 {
        return Ok(present);
    }
    let mut messages = consumer.messages().await?;
    let mut go_on = Some(go_on);
    loop {
        let next = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .context("reading the stream back timed out")?;
        let Some(message) = next else { break };
        let message = message.map_err(|e| anyhow::anyhow!("{e}"))?;
        if go_on.take().is_some_and(|go_on| !go_on(&message)) {
            break;
        }
        if let Some(id) = message
            .headers
            .as_ref()
            .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
        {
            present.insert(id.to_string());
        }
        if message.info().map_err(|e| anyhow::anyhow!("{e}"))?.pending == 0 {
            break;
        }
    }
    Ok(present)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_acks_are_sent_again_ever_more_slowly() {
        let waits: Vec<u128> = (0..10).map(|n| ack_failed_wait(n).as_millis()).collect();
        assert_eq!(
            waits,
            [0, 100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000]
        );
    }
}
