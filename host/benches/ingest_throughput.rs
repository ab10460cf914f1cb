//! Events/s from a local SSE server (`weir serve-sse`'s code, generator, as fast as possible) into a JetStream
//! stream on a real nats-server (file storage), through the whole ingest: SSE parsing, source-id extraction,
//! publishing with `Nats-Msg-Id` and awaited acks, position saving. Backfill is what needs this speed (the live
//! stream peaks near 90 events/s).
//!
//! Run with `make bench` (or `cargo bench -p weir --bench ingest_throughput`). `WEIR_BENCH_EVENTS` sets the
//! number of events (default 200,000).

use std::sync::Arc;
use std::time::{Duration, Instant};

use weir::bus::{NatsServer, StreamConfig};
use weir::ingest::{Ingest, IngestConfig};
use weir::source::client::SseConfig;
use weir::source::generate::{GenConfig, Generator};
use weir::source::serve::{Events, ServeConfig, spawn_local};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let events: u64 = std::env::var("WEIR_BENCH_EVENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(200_000);
    let dir = tempfile::tempdir().unwrap();
    let server = NatsServer::start(dir.path(), None).expect("a nats-server (run `make setup`)");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let config = IngestConfig::default();
    let (rate, bytes, mean) = runtime.block_on(async {
        let generator = Generator::new(GenConfig::default());
        let mean = (0..1000)
            .map(|i| generator.event(i).data.len())
            .sum::<usize>()
            / 1000;
        let serve = ServeConfig::new(Events::Generated {
            generator,
            count: Some(events),
        });
        let (url, server_task) = spawn_local(Arc::new(serve)).await.unwrap();
        let nats = weir::bus::connect(&server.url(), "bench").await.unwrap();
        let stream = StreamConfig {
            name: "BENCH".into(),
            subjects: vec!["bench.events".into()],
            ..StreamConfig::default()
        };
        let source = SseConfig {
            url,
            ..SseConfig::default()
        };
        let mut ingest = Ingest::new(nats.clone(), source, stream, config.clone())
            .await
            .unwrap();
        let stats = ingest.stats().clone();
        let started = Instant::now();
        let watched = stats.clone();
        ingest
            .run(async move {
                while watched
                    .publish
                    .published
                    .load(std::sync::atomic::Ordering::Relaxed)
                    < events
                {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
            .await
            .unwrap();
        let elapsed = started.elapsed().as_secs_f64();
        server_task.abort();
        let bytes = stats
            .publish
            .bytes
            .load(std::sync::atomic::Ordering::Relaxed);
        (events as f64 / elapsed, bytes, mean)
    });
    println!(
        "ingest throughput: serve-sse (generator, as fast as possible) → JetStream (file storage), {events} events of ~{mean} B"
    );
    println!(
        "  publish mode: asynchronous publish with Nats-Msg-Id, every ack awaited in order, at most {} in flight",
        config.max_in_flight
    );
    println!("  events/s    {rate:>10.0}");
    println!(
        "  MB/s        {:>10.1}",
        bytes as f64 / 1e6 * rate / events as f64
    );
}
