//! `weir ingest`: one SSE source into JetStream, on its own (at the edge, or to fill a stream).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Result;
use clap::Args;

use crate::bus::{NatsServer, StreamConfig};
use crate::ingest::{Ingest, IngestConfig};
use crate::source::client::SseConfig;

#[derive(Args)]
pub struct IngestArgs {
    /// The SSE stream to read.
    #[arg(long, default_value_t = SseConfig::default().url)]
    url: String,
    /// NATS server URL; without one, a local nats-server is started with its data under --data-dir.
    #[arg(long, env = "WEIR_NATS_URL")]
    nats: Option<String>,
    /// Where the local nats-server keeps its data (when --nats is not given).
    #[arg(long, default_value = ".weir/nats")]
    data_dir: PathBuf,
    /// The JetStream stream to fill.
    #[arg(long, default_value_t = StreamConfig::default().name)]
    stream: String,
    /// The subject to publish to (the stream captures it).
    #[arg(long, default_value_t = StreamConfig::default().subjects[0].clone())]
    subject: String,
    /// The source's name: the key of its saved position.
    #[arg(long, default_value_t = IngestConfig::default().name)]
    name: String,
    /// Sent as User-Agent: say who runs this and how to reach them.
    #[arg(long, env = "WEIR_USER_AGENT", default_value_t = SseConfig::default().user_agent)]
    user_agent: String,
    /// Start here when there is no saved position (ms, or an ISO 8601 date).
    #[arg(long)]
    since: Option<String>,
    /// Drop canary events instead of publishing them.
    #[arg(long)]
    drop_canary: bool,
    /// Publishes awaiting their ack at most.
    #[arg(long, default_value_t = IngestConfig::default().max_in_flight)]
    max_in_flight: usize,
    /// Stop once this many events are published (default: run until interrupted).
    #[arg(long)]
    stop_after: Option<u64>,
}

pub fn run(args: IngestArgs) -> Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new()?;
    let signal = super::shutdown_signal(&runtime);
    runtime.block_on(async move {
        let local = match &args.nats {
            Some(_) => None,
            None => Some(NatsServer::start(&args.data_dir, None)?),
        };
        let url = args
            .nats
            .clone()
            .or_else(|| local.as_ref().map(NatsServer::url))
            .expect("a URL either way");
        let nats = crate::bus::connect(&url, "weir-ingest").await?;
        let source = SseConfig {
            url: args.url.clone(),
            user_agent: args.user_agent.clone(),
            since: args.since.clone(),
            ..SseConfig::default()
        };
        let stream = StreamConfig {
            name: args.stream.clone(),
            subjects: vec![args.subject.clone()],
            ..StreamConfig::default()
        };
        let config = IngestConfig {
            name: args.name.clone(),
            drop_canary: args.drop_canary,
            max_in_flight: args.max_in_flight,
            ..IngestConfig::default()
        };
        let mut ingest = Ingest::new(nats, source, stream, config).await?;
        let stats = ingest.stats().clone();
        eprintln!(
            "ingesting {} into stream {} at {url}",
            args.url, args.stream
        );
        let report = {
            let stats = stats.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(10));
                tick.tick().await;
                loop {
                    tick.tick().await;
                    tracing::info!(
                        received = stats.received.load(Ordering::Relaxed),
                        published = stats.publish.published.load(Ordering::Relaxed),
                        duplicates = stats.publish.duplicates.load(Ordering::Relaxed),
                        invalid_json = stats.invalid_json.load(Ordering::Relaxed),
                        oversize = stats.oversize.load(Ordering::Relaxed),
                        reconnects = stats.reconnects.load(Ordering::Relaxed),
                        lag_ms = stats.lag_ms(),
                        "ingest"
                    );
                }
            })
        };
        let stop_after = args.stop_after;
        let stop = async move {
            let enough = async {
                match stop_after {
                    Some(n) => loop {
                        let done = stats.publish.published.load(Ordering::Relaxed)
                            + stats.publish.duplicates.load(Ordering::Relaxed);
                        if done >= n {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    },
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = enough => {}
                _ = signal => {}
            }
        };
        ingest.run(stop).await?;
        report.abort();
        let s = ingest.stats();
        eprintln!(
            "received {}, published {}, duplicates {}, not JSON {}, oversize {}, reconnects {}",
            s.received.load(Ordering::Relaxed),
            s.publish.published.load(Ordering::Relaxed),
            s.publish.duplicates.load(Ordering::Relaxed),
            s.invalid_json.load(Ordering::Relaxed),
            s.oversize.load(Ordering::Relaxed),
            s.reconnects.load(Ordering::Relaxed),
        );
        drop(local);
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}
