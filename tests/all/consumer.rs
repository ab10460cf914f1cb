//! The pipeline's pull from its durable consumer (or, in exclusive mode, its ordered one), against a real
//! nats-server: when a quiet pull counts as stalled (and is opened anew), when quiet is just quiet, and that
//! messages a slow processor made the client drop still arrive.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};
use futures::StreamExt;
use weir::pipeline::runner::stalled;

use crate::harness::{nats_server, runtime};

/// A stream of one subject, `name` in lower case, and a durable pull consumer on it with explicit acks and
/// `config`'s other settings.
async fn durable(
    js: &jetstream::Context,
    name: &str,
    config: pull::Config,
) -> jetstream::consumer::Consumer<pull::Config> {
    let subject = name.to_lowercase();
    let stream = js
        .create_stream(jetstream::stream::Config {
            name: name.into(),
            subjects: vec![subject.clone()],
            ..Default::default()
        })
        .await
        .unwrap();
    stream
        .create_consumer(pull::Config {
            durable_name: Some(subject),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ..config
        })
        .await
        .unwrap()
}

#[test]
fn a_quiet_pull_is_stalled_only_while_deliverable_messages_wait() {
    let dir = tempfile::tempdir().unwrap();
    let server = nats_server(dir.path());
    runtime().block_on(async {
        let client = async_nats::connect(server.url()).await.unwrap();
        let js = jetstream::new(client);
        let consumer = durable(
            &js,
            "QUIET",
            pull::Config {
                max_ack_pending: 5,
                ..Default::default()
            },
        )
        .await;

        // An empty stream: nothing to wait for.
        assert_eq!(stalled(&consumer).await, None);

        for i in 0..8 {
            js.publish("quiet", format!("{i}").into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
        // Messages wait and the server may deliver them: a pull that brings none is stuck.
        assert_eq!(stalled_soon(&consumer, 8).await, Some(8));

        // Five delivered, none acked: at the ack-pending limit the server holds the rest back, and quiet
        // is what a healthy pull sees too.
        let mut held = Vec::new();
        let mut batch = consumer.fetch().max_messages(5).messages().await.unwrap();
        while let Some(m) = batch.next().await {
            held.push(m.unwrap());
        }
        assert_eq!(held.len(), 5);
        assert_eq!(stalled(&consumer).await, None);

        // Acked, the rest can come again (once the server has taken the acks, which are not confirmed).
        for m in &held {
            m.ack().await.unwrap();
        }
        assert_eq!(stalled_soon(&consumer, 3).await, Some(3));
    });
}

/// [`stalled`], asked again until it says `waiting` or 10 s have passed: on a busy machine the server can
/// take more than a moment to count acks, and a consumer info request that times out reads as not stalled.
async fn stalled_soon(
    consumer: &jetstream::consumer::Consumer<pull::Config>,
    waiting: u64,
) -> Option<u64> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut seen = stalled(consumer).await;
    while seen != Some(waiting) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        seen = stalled(consumer).await;
    }
    seen
}

/// A slow consumer that loses messages still gets every one: the client's subscription is small and the
/// processor holds the first batches, so the server's messages overflow the subscription and are dropped
/// (async-nats drops on a full subscription). The pull may then count them as coming and ask for no more
/// (a stall: `fetch` opens a new pull after 15 s, or async-nats sends a fresh request after 35 s), or the
/// dropped ones come again after `ack_wait` through the request still open; which one depends on timing,
/// so the test holds the outcome, not the path: every message arrives. The same for an exclusive reader,
/// whose stalled pull `fetch` replaces after 5 s with one that starts after the last message handed over.
#[test]
fn a_slow_consumer_that_drops_messages_still_gets_every_one() {
    every_message_reaches_a_slow_processor(false);
}

/// The same through an exclusive host's ordered consumer, which has no acks and so no redeliveries: the
/// dropped messages leave a gap in the consumer's sequence, and the ordered consumer starts again after the
/// last message it handed over.
#[test]
fn an_exclusive_reader_that_drops_messages_still_gets_every_one() {
    every_message_reaches_a_slow_processor(true);
}

fn every_message_reaches_a_slow_processor(exclusive: bool) {
    use std::collections::HashSet;
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    use weir::pipeline::runner::{Reader, fetch};
    use weir::pipeline::shared::{Counters, Health, Pauses, Recent, Shared};

    // More than one pull request asks for (16 batches of 256; an ordered consumer asks for 500), so the
    // stalled pull leaves some undelivered. An exclusive reader loses the tail of most pulls here (its pulls
    // outrun a 64-message subscription, and there are no redeliveries), so each of its stalls brings only
    // a few hundred: fewer messages keep the test short.
    let messages: u64 = if exclusive { 3_000 } else { 10_000 };
    let dir = tempfile::tempdir().unwrap();
    let server = nats_server(dir.path());
    runtime().block_on(async {
        let client = async_nats::ConnectOptions::new()
            .subscription_capacity(64)
            .connect(server.url())
            .await
            .unwrap();
        let js = jetstream::new(client);
        let consumer = durable(
            &js,
            "LOST",
            pull::Config {
                ack_wait: Duration::from_secs(2),
                ..Default::default()
            },
        )
        .await;
        let payload = vec![b'x'; 1000];
        for _ in 0..messages {
            js.publish("lost", payload.clone().into()).await.unwrap();
        }
        js.publish("lost", payload.into())
            .await
            .unwrap()
            .await
            .unwrap();

        let (control, _control) = tokio::sync::mpsc::channel(1);
        let shared = Arc::new(Shared {
            pipeline: "lost".into(),
            counters: Counters::default(),
            health: Health::default(),
            plugins: Default::default(),
            recent: std::sync::Mutex::new(Recent::default()),
            pauses: Pauses::default(),
            ingest: arc_swap::ArcSwap::from_pointee(None),
            control,
            stages: Vec::new(),
            lake: weir::lake::store::Store::open(&weir::lake::store::StoreConfig {
                url: "memory://".into(),
                ..Default::default()
            })
            .unwrap(),
            started_ms: 0,
        });
        let reader = if exclusive {
            Reader::Exclusive {
                stream: js.get_stream("LOST").await.unwrap(),
                description: "test".into(),
                start: 1,
            }
        } else {
            Reader::Shared(consumer)
        };
        let (batches_tx, mut batches) = weir::pipeline::handover::channel(1);
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(fetch(reader, 256, batches_tx, shared.clone(), stop));
        // The processor is busy: the pull's messages pile up past the subscription and are dropped.
        tokio::time::sleep(Duration::from_secs(3)).await;

        let mut seen = HashSet::new();
        let mut last = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while (seen.len() as u64) < messages + 1 {
            let batch = tokio::time::timeout_at(deadline, batches.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "{} of {} messages after 120 s; pulls reopened: {}",
                        seen.len(),
                        messages + 1,
                        shared.counters.pulls_reopened.load(Ordering::Relaxed)
                    )
                })
                .unwrap();
            for m in batch {
                let seq = m.info().unwrap().stream_sequence;
                if exclusive {
                    // In stream order, each once: a new pull starts right after the last message taken.
                    assert!(seq > last, "{seq} after {last}");
                    last = seq;
                } else {
                    m.ack().await.unwrap();
                }
                seen.insert(seq);
            }
        }
        eprintln!(
            "every message came; pulls reopened: {}",
            shared.counters.pulls_reopened.load(Ordering::Relaxed)
        );
        let _ = stop_tx.send(true);
        task.await.unwrap().unwrap();
    });
}
