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
//! - The source position (the SSE id) of the newest acked event is saved in a JetStream key-value bucket, so a
//!   restarted host resumes where it left off.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use async_nats::HeaderMap;
use async_nats::jetstream::{self, context::PublishAckFuture, kv};
use bytes::Bytes;

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

/// KV keys allow `[-/_=\.a-zA-Z0-9]`: anything else in a source name becomes `_`.
fn kv_key(source: &str) -> String {
    source
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_=".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
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
            .get(kv_key(source))
            .await
            .with_context(|| format!("cannot read the position of source {source}"))?;
        Ok(value.map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    pub async fn set(&self, source: &str, position: &str) -> Result<()> {
        self.kv
            .put(kv_key(source), Bytes::copy_from_slice(position.as_bytes()))
            .await
            .with_context(|| format!("cannot save the position of source {source}"))?;
        Ok(())
    }
}

struct InFlight {
    message: Outgoing,
    ack: Option<PublishAckFuture>,
}

pub struct Publisher {
    js: jetstream::Context,
    subject: String,
    max_in_flight: usize,
    in_flight: VecDeque<InFlight>,
    positions: Positions,
    source: String,
    /// The newest position acked, and whether it is saved.
    acked_position: Option<String>,
    saved: bool,
    last_save: Instant,
    save_every: Duration,
    stats: Arc<PublishStats>,
}

impl Publisher {
    pub fn new(
        js: jetstream::Context,
        subject: impl Into<String>,
        max_in_flight: usize,
        positions: Positions,
        source: impl Into<String>,
        stats: Arc<PublishStats>,
    ) -> Self {
        Publisher {
            js,
            subject: subject.into(),
            max_in_flight: max_in_flight.max(1),
            in_flight: VecDeque::new(),
            positions,
            source: source.into(),
            acked_position: None,
            saved: true,
            last_save: Instant::now(),
            save_every: Duration::from_secs(1),
            stats,
        }
    }

    pub fn stats(&self) -> &Arc<PublishStats> {
        &self.stats
    }

    /// The newest source position whose event the server has acked.
    pub fn acked_position(&self) -> Option<&str> {
        self.acked_position.as_deref()
    }

    /// Sends a message; waits for the oldest ack first when `max_in_flight` are pending.
    pub async fn publish(&mut self, message: Outgoing) -> Result<()> {
        while self.in_flight.len() >= self.max_in_flight {
            self.settle_oldest().await?;
        }
        let ack = self.send(&message).await;
        let failed = ack.is_err();
        self.in_flight.push_back(InFlight {
            message,
            ack: ack.ok(),
        });
        if failed {
            self.resend_all().await?;
        }
        if self.last_save.elapsed() >= self.save_every {
            self.save_position().await?;
        }
        Ok(())
    }

    /// Waits until every message sent is acked, and saves the position.
    pub async fn flush(&mut self) -> Result<()> {
        while !self.in_flight.is_empty() {
            self.settle_oldest().await?;
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

    async fn send(
        &self,
        message: &Outgoing,
    ) -> Result<PublishAckFuture, async_nats::jetstream::context::PublishError> {
        let mut publish = jetstream::message::PublishMessage::build()
            .payload(message.payload.clone())
            .message_id(&message.id);
        for (name, values) in message.headers.iter() {
            for value in values {
                publish = publish.header(name.clone(), value.clone());
            }
        }
        self.js.send_publish(self.subject.clone(), publish).await
    }

    async fn settle_oldest(&mut self) -> Result<()> {
        let Some(front) = self.in_flight.front_mut() else {
            return Ok(());
        };
        let result = match front.ack.take() {
            Some(ack) => ack.await.map_err(|e| e.to_string()),
            None => Err("not sent".to_string()),
        };
        match result {
            Ok(ack) => {
                let done = self.in_flight.pop_front().expect("front exists");
                if ack.duplicate {
                    self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.stats.published.fetch_add(1, Ordering::Relaxed);
                    self.stats
                        .bytes
                        .fetch_add(done.message.payload.len() as u64, Ordering::Relaxed);
                }
                if let Some(position) = done.message.position {
                    self.acked_position = Some(position);
                    self.saved = false;
                }
                Ok(())
            }
            Err(e) => {
                tracing::warn!(subject = %self.subject, "publish ack failed ({e}); sending the unacked messages again");
                self.resend_all().await
            }
        }
    }

    /// Sends every unacked message again, in order, until each has an ack future; waits out the acks of the
    /// earlier sends first so the new sends come after them.
    async fn resend_all(&mut self) -> Result<()> {
        for entry in &mut self.in_flight {
            if let Some(ack) = entry.ack.take() {
                let _ = ack.await;
            }
        }
        let mut delay = Duration::from_millis(100);
        let mut i = 0;
        while i < self.in_flight.len() {
            match self.send(&self.in_flight[i].message).await {
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
