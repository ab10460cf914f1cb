//! Ingest against a real nats-server: whatever happens to the SSE connection or the host, the JetStream stream
//! ends up with each source event exactly once, in the order the source sent them.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;
use weir::bus::StreamConfig;
use weir::ingest::{Ingest, IngestConfig};
use weir::source::client::SseConfig;
use weir::source::generate::{GenConfig, Generator};
use weir::source::serve::{Cut, Events, Ids, ServeConfig, spawn_local};
use weir::source::sse::{Limits, SseItem, parse_all};

use crate::harness::{nats_server, runtime};
use crate::support::fixture;

/// Backoff short enough that a test with thousands of cuts runs in seconds.
fn source(url: &str) -> SseConfig {
    SseConfig {
        url: url.into(),
        min_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
        idle_timeout: Duration::from_secs(5),
        ..SseConfig::default()
    }
}

fn stream(name: &str) -> StreamConfig {
    StreamConfig {
        name: name.into(),
        subjects: vec![format!("test.{name}")],
        ..StreamConfig::default()
    }
}

/// The number of messages in a stream (0 while the server is unreachable).
async fn stream_count(nats: &async_nats::Client, stream: &str) -> u64 {
    let js = async_nats::jetstream::new(nats.clone());
    match js.get_stream(stream).await {
        Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    }
}

/// Resolves once the stream holds `count` messages.
async fn stream_reaches(nats: async_nats::Client, stream: String, count: u64) {
    while stream_count(&nats, &stream).await < count {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn ingest_config(name: &str) -> IngestConfig {
    IngestConfig {
        name: name.into(),
        ..IngestConfig::default()
    }
}

async fn start_ingest(
    nats: &async_nats::Client,
    url: &str,
    stream: &StreamConfig,
    name: &str,
) -> Ingest {
    Ingest::new(
        nats.clone(),
        source(url),
        stream.clone(),
        ingest_config(name),
    )
    .await
    .unwrap()
}

/// Ingests until the stream holds `expected` messages, then stops (flushing what is in flight).
async fn ingest_until(
    nats: &async_nats::Client,
    url: &str,
    stream: &StreamConfig,
    name: &str,
    expected: u64,
) -> Arc<weir::ingest::IngestStats> {
    let mut ingest = start_ingest(nats, url, stream, name).await;
    let stats = ingest.stats().clone();
    let done = stream_reaches(nats.clone(), stream.name.clone(), expected);
    tokio::time::timeout(Duration::from_secs(120), ingest.run(done))
        .await
        .expect("ingest finished in time")
        .unwrap();
    stats
}

/// The `meta.id` of every message in the stream, in stream order.
async fn stored_ids(nats: &async_nats::Client, stream: &str) -> Vec<String> {
    let js = async_nats::jetstream::new(nats.clone());
    let mut s = js.get_stream(stream).await.unwrap();
    let count = s.info().await.unwrap().state.messages;
    let consumer = s
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap().take(count as usize);
    let mut ids = Vec::new();
    while let Some(m) = messages.next().await {
        let m = m.unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        ids.push(doc["meta"]["id"].as_str().unwrap().to_string());
    }
    ids
}

/// The first `count` messages of `stream`, in stream order.
async fn stream_messages(
    nats: &async_nats::Client,
    stream: &str,
    count: usize,
) -> Vec<async_nats::jetstream::Message> {
    let js = async_nats::jetstream::new(nats.clone());
    let consumer = js
        .get_stream(stream)
        .await
        .unwrap()
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
        .await
        .unwrap();
    consumer
        .messages()
        .await
        .unwrap()
        .take(count)
        .map(Result::unwrap)
        .collect()
        .await
}

fn header_of(message: &async_nats::jetstream::Message, name: &str) -> Option<String> {
    message
        .headers
        .as_ref()
        .and_then(|h| h.get(name))
        .map(|v| v.to_string())
}

fn ids_of(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["meta"]["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

#[test]
fn raw_captures_parse_to_their_events() {
    // (file, events dispatched): an event counts only once an empty line ends it, so a capture that stops
    // right after its last `data:` line yields one event fewer (WHATWG: an unfinished event is discarded).
    let expected = [
        ("DataPlumbHub_readme_2025-04-30.sse", 1),
        ("dlw-github_wiki_visualizer_example.events", 2),
        ("go-sse-receiver-test_testData1_2020-07-31.sse", 0),
        ("go-sseclient-test_page-create_CRLF_2025-09-06.sse", 4),
        ("java-HelloController-mock_2025-08-29.sse", 9),
        ("java-SSEStreamMapperTest_codfw_2023-12-07.sse", 1),
        ("opensearch-readme_2025-05-22.sse", 1),
        ("stream2worlds_page_change_v1_first3_2026-09-27.sse", 3),
    ];
    for (file, count) in expected {
        let bytes = std::fs::read(fixture(&format!("wikimedia/raw-sse/{file}"))).unwrap();
        let events: Vec<_> = parse_all(&bytes, Limits::default())
            .into_iter()
            .filter_map(|item| match item {
                SseItem::Event(e) => Some(e),
                _ => None,
            })
            .collect();
        assert_eq!(events.len(), count, "{file}");
        for event in &events {
            assert_eq!(event.event, "message", "{file}");
            assert!(!event.invalid_utf8, "{file}");
            let doc: serde_json::Value = serde_json::from_str(&event.data)
                .unwrap_or_else(|e| panic!("{file}: data is not JSON: {e}"));
            assert!(
                doc["meta"]["id"].is_string() || doc["meta"]["dt"].is_string(),
                "{file}"
            );
            let id: serde_json::Value = serde_json::from_str(&event.last_event_id)
                .unwrap_or_else(|e| panic!("{file}: the SSE id is not JSON: {e}"));
            assert!(id.is_array(), "{file}: {id}");
        }
        // The same stream with LF line endings gives the same events.
        let lf: Vec<u8> = String::from_utf8_lossy(&bytes)
            .replace("\r\n", "\n")
            .into_bytes();
        let again = parse_all(&lf, Limits::default())
            .into_iter()
            .filter(|i| matches!(i, SseItem::Event(_)))
            .count();
        assert_eq!(again, count, "{file} with LF endings");
    }
}

#[test]
fn every_cut_point_of_a_sample_gives_each_event_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = nats_server(dir.path());
    let rt = runtime();
    let text =
        std::fs::read_to_string(fixture("wikimedia/events/recentchange.verbatim.ndjson")).unwrap();
    let lines: Vec<String> = text.lines().take(2).map(str::to_string).collect();
    let expected = ids_of(&lines);
    rt.block_on(async {
        let nats = weir::bus::connect(&server.url(), "test").await.unwrap();
        // The byte length of the whole stream as served: preamble, two events.
        let total = {
            let mut n = 5; // ":ok\n\n"
            for (i, l) in lines.iter().enumerate() {
                n += format!(
                    "event: message\nid: {}\ndata: {l}\n\n",
                    Ids::Offsets.format(i as u64, 0)
                )
                .len();
            }
            n as u64
        };
        // Every offset of the first half and a stride through the rest keeps the run short; the first
        // event's framing (every line, every field, every byte of its data) is covered byte by byte.
        let offsets: Vec<u64> = (1..total / 2)
            .chain((total / 2..=total).step_by(7))
            .collect();
        for (run, cut) in offsets.iter().enumerate() {
            let mut config = ServeConfig::new(Events::lines(lines.clone()));
            config.cut = Cut::First(*cut);
            let (url, server_task) = spawn_local(Arc::new(config)).await.unwrap();
            let name = format!("CUT{run}");
            let stream = stream(&name);
            ingest_until(&nats, &url, &stream, &name, expected.len() as u64).await;
            server_task.abort();
            assert_eq!(
                stored_ids(&nats, &name).await,
                expected,
                "cut after {cut} bytes"
            );
            async_nats::jetstream::new(nats.clone())
                .delete_stream(&name)
                .await
                .unwrap();
        }
    });
}

#[test]
fn random_cuts_many_times_give_each_event_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = nats_server(dir.path());
    let rt = runtime();
    let generator = Generator::new(GenConfig::default());
    let lines: Vec<String> = (0..3000).map(|i| generator.event(i).data).collect();
    let expected = ids_of(&lines);
    rt.block_on(async {
        let nats = weir::bus::connect(&server.url(), "test").await.unwrap();
        let mut config = ServeConfig::new(Events::lines(lines.clone()));
        config.cut = Cut::Random {
            max: 40_000,
            seed: 7,
        };
        let config = Arc::new(config);
        let (url, server_task) = spawn_local(config.clone()).await.unwrap();
        let stream = stream("RANDOMCUTS");
        let stats = ingest_until(&nats, &url, &stream, "random", expected.len() as u64).await;
        server_task.abort();
        let connections = config.connections.load(Ordering::Relaxed);
        assert!(connections > 100, "only {connections} connections");
        assert!(stats.reconnects.load(Ordering::Relaxed) >= connections - 1);
        assert_eq!(stored_ids(&nats, "RANDOMCUTS").await, expected);
    });
}

/// Generated events whose times are out of order by up to `disorder_ms`, and the ids of the first `count`.
fn out_of_order(disorder_ms: u64, count: u64) -> (GenConfig, Vec<String>) {
    let generated = GenConfig {
        disorder_ms,
        ..GenConfig::default()
    };
    let generator = Generator::new(generated.clone());
    let lines: Vec<String> = (0..count).map(|i| generator.event(i).data).collect();
    (generated, ids_of(&lines))
}

/// A server of `count` generated events whose SSE ids are times, as the live stream's.
fn serve_times(generated: GenConfig, count: u64) -> ServeConfig {
    let mut serve = ServeConfig::new(Events::Generated {
        generator: Generator::new(generated),
        count: Some(count),
    });
    serve.ids = Ids::Timestamps;
    serve
}

/// The live stream's positions are times, and its events' times are out of order: a resume from the time sent
/// back unchanged skips the events that followed the position with an earlier time. Sent back
/// `source.resume_overlap` earlier, none is lost, and what comes again is dropped as a duplicate. A source
/// that cuts connections sooner than it sends the overlap again is still read through, losing nothing: each
/// resume goes back half as far until one gets past the position.
#[test]
fn positions_that_are_times_resume_without_loss() {
    let dir = tempfile::tempdir().unwrap();
    let server = nats_server(dir.path());
    let rt = runtime();
    let count = 3000;
    rt.block_on(async {
        let nats = weir::bus::connect(&server.url(), "test").await.unwrap();
        // (times out of order by up to, events per connection, overlap): 5 s is ~175 events.
        for (disorder_ms, cut_every, overlap, name) in [
            (2_000, 250, Duration::ZERO, "TIMESUNCHANGED"),
            (2_000, 250, Duration::from_secs(5), "TIMESOVERLAP"),
            (2_000, 100, Duration::from_secs(5), "TIMESHALVED"),
        ] {
            let (generated, expected) = out_of_order(disorder_ms, count);
            let mut serve = serve_times(generated, count);
            serve.cut_every = Some(cut_every);
            let serve = Arc::new(serve);
            let (url, server_task) = spawn_local(serve.clone()).await.unwrap();
            let stream = stream(name);
            let source = SseConfig {
                resume_overlap: Some(overlap),
                ..source(&url)
            };
            let mut ingest = Ingest::new(nats.clone(), source, stream, ingest_config(name))
                .await
                .unwrap();
            let stats = ingest.stats().clone();
            // Until every event is in, or (when some are lost) the stream has stopped growing.
            let settled = {
                let nats = nats.clone();
                async move {
                    let (mut last, mut still) = (0, 0);
                    while last < count && (last == 0 || still < 20) {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        let now = stream_count(&nats, name).await;
                        still = if now == last { still + 1 } else { 0 };
                        last = now;
                    }
                }
            };
            tokio::time::timeout(Duration::from_secs(120), ingest.run(settled))
                .await
                .expect("ingest finished in time")
                .unwrap();
            server_task.abort();
            let stored = stored_ids(&nats, name).await;
            let connections = serve.connections.load(Ordering::Relaxed);
            if overlap.is_zero() {
                // What the source sent again is dropped, but what it skipped never came.
                let mut rest = expected.iter();
                assert!(
                    stored.iter().all(|id| rest.any(|e| e == id)),
                    "in order, each at most once"
                );
                assert!(
                    stored.len() < expected.len(),
                    "the source skips events out of time order after a position sent back unchanged"
                );
            } else {
                assert_eq!(
                    stored,
                    expected,
                    "{name}: {connections} connections, {} stored of {}",
                    stored.len(),
                    expected.len()
                );
                assert!(stats.publish.duplicates.load(Ordering::Relaxed) > 0);
            }
            assert!(connections > count / cut_every, "{connections} connections");
        }
    });
}

/// A resume from before the position after the stream's duplicate window has passed (a host down for longer):
/// the stream would store what the source sends again twice, so the publisher reads back the ids it holds and
/// drops those itself.
#[test]
fn a_rewound_resume_past_the_duplicate_window_stores_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let server = nats_server(dir.path());
    let rt = runtime();
    let count = 2000;
    let (generated, expected) = out_of_order(500, count);
    rt.block_on(async {
        let nats = weir::bus::connect(&server.url(), "test").await.unwrap();
        let mut serve = serve_times(generated, count);
        serve.rate = Some(5_000.0);
        let (url, server_task) = spawn_local(Arc::new(serve)).await.unwrap();
        let stream = StreamConfig {
            duplicate_window: Duration::from_secs(2),
            ..stream("GUARD")
        };
        let start = |stream: StreamConfig| {
            let source = SseConfig {
                resume_overlap: Some(Duration::from_secs(1)),
                ..source(&url)
            };
            Ingest::new(nats.clone(), source, stream, ingest_config("guard"))
        };
        let mut first = start(stream.clone()).await.unwrap();
        tokio::time::timeout(
            Duration::from_secs(60),
            first.run(stream_reaches(nats.clone(), "GUARD".into(), count / 2)),
        )
        .await
        .unwrap()
        .unwrap();
        // Down for longer than the duplicate window.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let mut second = start(stream).await.unwrap();
        let stats = second.stats().clone();
        tokio::time::timeout(
            Duration::from_secs(60),
            second.run(stream_reaches(nats.clone(), "GUARD".into(), count)),
        )
        .await
        .unwrap()
        .unwrap();
        server_task.abort();
        assert!(
            stats.publish.duplicates.load(Ordering::Relaxed) > 0,
            "some came again"
        );
        assert_eq!(stored_ids(&nats, "GUARD").await, expected);
    });
}

#[test]
fn a_restarted_host_resumes_without_loss_or_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let server = nats_server(dir.path());
    let rt = runtime();
    let generator = Generator::new(GenConfig::default());
    let lines: Vec<String> = (0..4000).map(|i| generator.event(i).data).collect();
    let expected = ids_of(&lines);
    rt.block_on(async {
        let nats = weir::bus::connect(&server.url(), "test").await.unwrap();
        let mut config = ServeConfig::new(Events::lines(lines.clone()));
        config.rate = Some(20_000.0);
        let (url, server_task) = spawn_local(Arc::new(config)).await.unwrap();
        let stream = stream("RESTART");
        // Three hosts one after the other; the first two are killed mid-stream (their task dropped, with
        // acks in flight and the saved position up to a second stale).
        for kill_after in [900u64, 2200] {
            let mut ingest = start_ingest(&nats, &url, &stream, "restart").await;
            let task = tokio::spawn(async move { ingest.run(std::future::pending()).await });
            while stream_count(&nats, "RESTART").await < kill_after {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            task.abort();
            let _ = task.await;
        }
        ingest_until(&nats, &url, &stream, "restart", expected.len() as u64).await;
        server_task.abort();
        assert_eq!(stored_ids(&nats, "RESTART").await, expected);
    });
}

#[test]
fn nats_server_restart_mid_stream_loses_nothing() {
    crate::support::init_logging();
    let dir = tempfile::tempdir().unwrap();
    let mut server = nats_server(dir.path());
    let rt = runtime();
    let generator = Generator::new(GenConfig::default());
    let lines: Vec<String> = (0..10_000).map(|i| generator.event(i).data).collect();
    let expected = ids_of(&lines);
    let url = server.url();
    rt.block_on(async {
        let nats = weir::bus::connect(&url, "test").await.unwrap();
        let mut config = ServeConfig::new(Events::lines(lines.clone()));
        config.rate = Some(2_000.0);
        let (sse_url, server_task) = spawn_local(Arc::new(config)).await.unwrap();
        let stream = stream("NATSRESTART");
        let mut ingest = start_ingest(&nats, &sse_url, &stream, "natsrestart").await;
        let stats = ingest.stats().clone();
        let done = stream_reaches(nats.clone(), "NATSRESTART".into(), expected.len() as u64);
        let task = tokio::spawn(async move { ingest.run(done).await });
        // Crash the server twice while events flow, each time after another thousand events were stored,
        // and bring it back on the same port and store. A crash loses what the server acked in its last
        // milliseconds but had not written yet: the publisher must notice and send those again.
        for _ in 0..2 {
            let kill_at = stats.publish.published.load(Ordering::Relaxed) + 1000;
            while stats.publish.published.load(Ordering::Relaxed) < kill_at {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            tokio::task::block_in_place(|| {
                server.kill();
                std::thread::sleep(Duration::from_millis(300));
                server.restart().unwrap();
            });
        }
        let finished = tokio::time::timeout(Duration::from_secs(120), task).await;
        let mut stored = stored_ids(&nats, "NATSRESTART").await;
        let held: std::collections::HashSet<&String> = stored.iter().collect();
        let missing = expected.iter().filter(|id| !held.contains(id)).count();
        finished
            .unwrap_or_else(|_| {
                panic!("ingest did not finish: {missing} events missing from the stream")
            })
            .unwrap()
            .unwrap();
        server_task.abort();
        // Every event exactly once. The few a crash lost are stored again after those the client had queued
        // while the server was down, so the order is not checked here.
        let mut expected = expected.clone();
        stored.sort();
        expected.sort();
        assert_eq!(stored, expected);
    });
}

/// What a crashed server loses: messages it acked but had not written yet. A stream that holds only the
/// older ones, on a server that is then killed and restarted, is what such a crash leaves; the publisher must
/// find the gap after the reconnect and fill it, each message once.
#[test]
fn acked_messages_a_crashed_server_lost_are_sent_again() {
    crash_loses_acked_messages(64, 100, 90, 10);
}

/// The same at a scale where the lost messages and those queued while the server was down, sent again
/// together, pass async-nats's default limit of 5,000 pending acks per JetStream context: the publisher must
/// not wait for a permit that only its own unpolled acks could give back.
#[test]
fn a_resend_past_the_client_ack_limit_completes() {
    crash_loses_acked_messages(3000, 3000, 0, 3000);
}

/// Publishes `before` messages with `in_flight` acks pending at most, leaves the stream holding the first
/// `kept` of them, kills and restarts the server while `after` more are published, and checks that the
/// stream ends up with every message once.
fn crash_loses_acked_messages(in_flight: usize, before: u32, kept: u32, after: u32) {
    let dir = tempfile::tempdir().unwrap();
    let mut server = nats_server(dir.path());
    let rt = runtime();
    rt.block_on(async {
        let nats = weir::bus::connect(&server.url(), "test").await.unwrap();
        let js = async_nats::jetstream::new(nats.clone());
        let config = stream("LOST");
        config.ensure(&js).await.unwrap();
        let positions = weir::bus::Positions::open(&js).await.unwrap();
        let stats = Arc::new(weir::bus::PublishStats::default());
        let mut publisher = weir::bus::Publisher::new(
            nats.clone(),
            config.subject(),
            in_flight,
            positions,
            "lost",
            stats.clone(),
        );
        let message = |i: u32| weir::bus::publish::Outgoing {
            id: format!("event-{i:05}"),
            payload: format!("{{\"meta\":{{\"id\":\"event-{i:05}\"}}}}").into(),
            headers: async_nats::HeaderMap::new(),
            position: Some(i.to_string()),
        };
        for i in 0..before {
            publisher.publish(message(i)).await.unwrap();
        }
        publisher.flush().await.unwrap();
        // The stream as the crash leaves it: the first `kept` messages, the newest never written.
        js.delete_stream("LOST").await.unwrap();
        config.ensure(&js).await.unwrap();
        for i in 0..kept {
            let m = message(i);
            let publish = async_nats::jetstream::message::PublishMessage::build()
                .payload(m.payload)
                .message_id(&m.id);
            js.send_publish(config.subject().to_string(), publish)
                .await
                .unwrap()
                .await
                .unwrap();
        }
        // Crash it then (it rebuilds its duplicate window from what it holds), and publish more while it is
        // down: the client queues those, and the new server stores them where the lost ones were.
        tokio::time::sleep(Duration::from_millis(200)).await;
        server.kill();
        let restart = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(500));
            server.restart().unwrap();
            server
        });
        let total = before + after;
        let finished = tokio::time::timeout(Duration::from_secs(120), async {
            for i in before..total {
                publisher.publish(message(i)).await.unwrap();
            }
            publisher.flush().await.unwrap();
        })
        .await;
        let _server = restart.join().unwrap();
        finished.expect("the publisher finished within 2 minutes");
        let mut stored = stored_ids(&nats, "LOST").await;
        stored.sort();
        let expected: Vec<String> = (0..total).map(|i| format!("event-{i:05}")).collect();
        assert_eq!(stored, expected);
        // Each message counted once: as published, or as a duplicate when its ack was lost in the crash and
        // the resend found it stored.
        let counted =
            stats.published.load(Ordering::Relaxed) + stats.duplicates.load(Ordering::Relaxed);
        assert_eq!(counted, u64::from(total));
    });
}

/// An event too big to keep reaches the stream as its start, marked `oversize` with its size, so the
/// pipeline quarantines it: one over `source.max_event_bytes` (the parser kept none of it), and one under it
/// but, with its headers, over what the NATS server takes (1 MiB), which sent as it is would be refused for
/// ever and hold up every event after it.
#[test]
fn oversize_events_reach_the_stream_marked_for_quarantine() {
    let dir = tempfile::tempdir().unwrap();
    let server = nats_server(dir.path());
    let rt = runtime();
    let generator = Generator::new(GenConfig::default());
    let big = |i: u64, bytes: usize| {
        let mut doc: serde_json::Value = serde_json::from_str(&generator.event(i).data).unwrap();
        doc["comment"] = "x".repeat(bytes).into();
        doc.to_string()
    };
    let lines = vec![
        generator.event(0).data,
        big(1, 2 << 20),
        generator.event(2).data,
        big(3, (1 << 20) + 1000),
        generator.event(4).data,
    ];
    rt.block_on(async {
        let nats = weir::bus::connect(&server.url(), "test").await.unwrap();
        let (url, server_task) =
            spawn_local(Arc::new(ServeConfig::new(Events::lines(lines.clone()))))
                .await
                .unwrap();
        let stream = stream("OVERSIZE");
        let source = SseConfig {
            max_event_bytes: 3 << 19,
            ..source(&url)
        };
        let mut ingest = Ingest::new(nats.clone(), source, stream.clone(), ingest_config("big"))
            .await
            .unwrap();
        let stats = ingest.stats().clone();
        let done = stream_reaches(nats.clone(), stream.name.clone(), 5);
        tokio::time::timeout(Duration::from_secs(60), ingest.run(done))
            .await
            .expect("ingest finished in time")
            .unwrap();
        server_task.abort();
        assert_eq!(stats.oversize.load(Ordering::Relaxed), 2);

        let messages = stream_messages(&nats, "OVERSIZE", 5).await;
        let header = |i: usize, name: &str| header_of(&messages[i], name);
        for i in [0, 2, 4] {
            assert_eq!(header(i, "Weir-Rejected"), None, "message {i}");
            assert_eq!(messages[i].payload, lines[i].as_bytes(), "message {i}");
        }
        assert_eq!(header(1, "Weir-Rejected").as_deref(), Some("oversize"));
        assert!(
            header(1, "Weir-Rejected-Detail")
                .unwrap()
                .contains("max_event_bytes")
        );
        assert!(messages[1].payload.is_empty());
        assert_eq!(header(3, "Weir-Rejected").as_deref(), Some("oversize"));
        assert!(
            header(3, "Weir-Rejected-Detail")
                .unwrap()
                .contains("max_payload")
        );
        assert_eq!(messages[3].payload, lines[3].as_bytes()[..64 << 10]);
    });
}

/// Event ids a header cannot carry as they are (a line break, which async-nats refuses with a panic) are
/// sent as a digest; events with an empty id are told apart by their bytes, not dropped as duplicates of
/// each other. Every event reaches the stream, once.
#[test]
fn ids_a_header_cannot_carry_reach_the_stream_as_digests() {
    let dir = tempfile::tempdir().unwrap();
    let server = nats_server(dir.path());
    let rt = runtime();
    let generator = Generator::new(GenConfig::default());
    let with_id = |i: u64, id: &str| {
        let mut doc: serde_json::Value = serde_json::from_str(&generator.event(i).data).unwrap();
        doc["meta"]["id"] = id.into();
        doc.to_string()
    };
    let lines = vec![
        generator.event(0).data,
        with_id(1, "a\nb"),
        with_id(2, ""),
        with_id(3, ""),
        with_id(4, "a\nb"),
    ];
    rt.block_on(async {
        let nats = weir::bus::connect(&server.url(), "test").await.unwrap();
        let (url, server_task) =
            spawn_local(Arc::new(ServeConfig::new(Events::lines(lines.clone()))))
                .await
                .unwrap();
        // Four stored, and the fifth dropped as the second's duplicate (the same id, the same digest).
        let mut ingest = start_ingest(&nats, &url, &stream("ODD_IDS"), "odd").await;
        let stats = ingest.stats().clone();
        let seen = stats.clone();
        let done = async move {
            while seen.settled() < 5 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(60), ingest.run(done))
            .await
            .expect("ingest finished in time")
            .unwrap();
        server_task.abort();
        assert_eq!(stats.publish.published.load(Ordering::Relaxed), 4);
        assert!(stats.publish.duplicates.load(Ordering::Relaxed) >= 1);
        let messages = stream_messages(&nats, "ODD_IDS", 4).await;
        let msg_id = |i: usize| header_of(&messages[i], "Nats-Msg-Id").unwrap();
        for (i, line) in lines.iter().take(4).enumerate() {
            assert_eq!(messages[i].payload, line.as_bytes(), "message {i}");
        }
        assert!(msg_id(1).starts_with("id-sha256:"), "{}", msg_id(1));
        assert!(msg_id(2).starts_with("sha256:"), "{}", msg_id(2));
        assert_ne!(msg_id(2), msg_id(3));
    });
}
