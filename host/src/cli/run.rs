//! `weir run`: the pipeline as a service (see `pipeline::service`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use crate::config::{Config, ConsumerMode};

#[derive(Args)]
pub struct RunArgs {
    /// The pipeline configuration.
    #[arg(long, short, default_value = "deploy/pipelines/wikimedia.toml")]
    config: PathBuf,
    /// Listen here for the API instead of the configured address (`127.0.0.1:0` picks a free port).
    #[arg(long)]
    api: Option<String>,
    /// Use this lake instead of the configured one.
    #[arg(long, env = "WEIR_LAKE_URL")]
    lake: Option<String>,
    /// S3-compatible stores: the endpoint (`http://minio:9000`); plain HTTP is then allowed for it.
    #[arg(long, env = "WEIR_LAKE_ENDPOINT")]
    lake_endpoint: Option<String>,
    /// Use this NATS server instead of the configured one (empty: a local nats-server).
    #[arg(long, env = "WEIR_NATS_URL")]
    nats: Option<String>,
    /// Read the stream as `shared` (a durable consumer any number of hosts share, acks per message) or
    /// `exclusive` (this host alone, from where the lake stopped, no acks) instead of `consumer.mode`.
    #[arg(long, env = "WEIR_CONSUMER_MODE", value_enum)]
    consumer_mode: Option<ConsumerMode>,
    /// Leave the configured source out: consume the stream only (another process, e.g. `weir ingest`,
    /// fills it).
    #[arg(long)]
    no_source: bool,
    /// When the configured source cannot be reached at start, serve generated events locally instead
    /// (`pipeline.offline_fallback`): for demos and the quick start only, since the generated events land in
    /// the stream and the lake like real ones.
    #[arg(long)]
    offline_fallback: bool,
    /// Stop after this long (demos and tests; default: until SIGINT or SIGTERM).
    #[arg(long, value_parser = humantime::parse_duration)]
    run_for: Option<std::time::Duration>,
}

pub fn run(args: RunArgs) -> Result<ExitCode> {
    let mut config = Config::load(&args.config)?;
    if let Some(api) = args.api {
        config.api.listen = api;
    }
    if let Some(lake) = args.lake {
        config.set_lake_url(lake);
    }
    if let Some(endpoint) = args.lake_endpoint {
        config.set_lake_endpoint(endpoint);
    }
    if let Some(nats) = args.nats {
        config.nats.url = nats;
    }
    if let Some(mode) = args.consumer_mode {
        config.set_consumer_mode(mode)?;
    }
    if args.no_source {
        config.source = None;
    }
    if args.offline_fallback {
        config.pipeline.offline_fallback = true;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("weir-io")
        .build()?;
    let run_for = args.run_for;
    let signal = super::shutdown_signal(&runtime);
    runtime.block_on(async move {
        let stop = async move {
            match run_for {
                Some(d) => {
                    tokio::select! {
                        _ = tokio::time::sleep(d) => {}
                        _ = signal => {}
                    }
                }
                None => signal.await,
            }
        };
        let reading = match config.exclusive() {
            true => "an exclusive reader",
            false => "a shared durable consumer",
        };
        crate::pipeline::service::run(config, stop, |started| {
            let api = started
                .api
                .map(|a| format!("http://{a}"))
                .unwrap_or_else(|| "off".into());
            // A gold table to look at (per-wiki counts in the default pipeline), if any stage emits one.
            let emitted = started.shared.gold_tables();
            let gold = emitted
                .iter()
                .find(|t| *t == "gold_wiki")
                .or(emitted.first())
                .map(|t| {
                    format!(" {api}/api/v1/gold/{t} (rows once its first window has closed),")
                })
                .unwrap_or_default();
            eprintln!(
                "weir is running: pipeline {}, source {}, NATS {} ({reading}), lake {}\n  look here: \
                 {api}/metrics, {api}/api/v1/events/latest,{gold} {api}/openapi.json; Parquet under {}",
                started.shared.pipeline,
                started.source.as_deref().unwrap_or("(none: consuming the stream only)"),
                started.nats_url,
                started.lake,
                started.lake,
            );
        })
        .await
    })?;
    Ok(ExitCode::SUCCESS)
}
