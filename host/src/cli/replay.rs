//! `weir replay`: silver and gold computed again from the stream or from bronze into a new table version,
//! or in place of the live rows of a range (see `pipeline::replay` and `lake::replace`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::config::Config;
use crate::lake::replace;
use crate::lake::store::Store;
use crate::pipeline::replay::{Replay, ReplayStart};

#[derive(Args)]
pub struct ReplayArgs {
    /// The pipeline configuration (its stream, stages, tables and lake).
    #[arg(long, short, default_value = "deploy/pipelines/wikimedia.toml")]
    config: PathBuf,
    /// The new table version's name: tables go to `<lake>/_versions/<version>/`.
    #[arg(long)]
    version: String,
    /// Replay from this stream sequence.
    #[arg(long, conflicts_with = "from_time")]
    from_seq: Option<u64>,
    /// Replay from the first message stored at or after this time (RFC 3339 or ms since the epoch).
    #[arg(long, value_parser = super::parse_time)]
    from_time: Option<i64>,
    /// The last sequence to replay (default: the stream's last when the replay starts).
    #[arg(long)]
    to_seq: Option<u64>,
    /// Read the events from the bronze table instead of the stream (for events the stream no longer
    /// holds): of the configured lake, or of the lake given (`--from-bronze=s3://bucket/lake`). The range
    /// options then select bronze rows by their original sequence or ingest time.
    #[arg(long, value_name = "LAKE", num_args = 0..=1, default_missing_value = "", require_equals = true)]
    from_bronze: Option<String>,
    /// Run a stage with another plugin: `--stage enrich=build/enrich-v2.wasm` (repeatable).
    #[arg(long = "stage", value_name = "STAGE=FILE")]
    stages: Vec<String>,
    /// Write the version here instead of `<lake>/_versions/<version>`.
    #[arg(long)]
    lake: Option<String>,
    /// Then put the version in place of the live silver, gold, drops and quarantine rows of the range, in
    /// one commit (bronze stays). The range is widened to whole commits and files; the replay starts from
    /// the plugin state the live pipeline had just before it. The live pipeline may keep running.
    #[arg(long)]
    in_place: bool,
    /// The S3-compatible endpoint of the lake (`http://127.0.0.1:8333`), as for `weir run`.
    #[arg(long, env = "WEIR_LAKE_ENDPOINT")]
    lake_endpoint: Option<String>,
    /// The NATS server holding the stream (default: the configured one, or the local server `weir run`
    /// started).
    #[arg(long, env = "WEIR_NATS_URL")]
    nats: Option<String>,
}

pub fn run(args: ReplayArgs) -> Result<ExitCode> {
    let mut config = Config::load(&args.config)?;
    if let Some(endpoint) = args.lake_endpoint.clone() {
        config.set_lake_endpoint(endpoint);
    }
    let mut replay = Replay {
        version: args.version.clone(),
        start: match (args.from_seq, args.from_time) {
            (_, Some(ms)) => ReplayStart::Time(ms),
            (seq, None) => ReplayStart::Sequence(seq.unwrap_or(1)),
        },
        until: args.to_seq,
        // The live lake as configured (with `WEIR_LAKE_URL`), before the version's replaces it below.
        bronze: args.from_bronze.as_ref().map(|lake| {
            if lake.is_empty() {
                config.lake_config().url
            } else {
                lake.clone()
            }
        }),
        in_place: None,
    };
    replay.validate().map_err(anyhow::Error::msg)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("weir-io")
        .build()?;
    let concurrency = config.lake_config().upload_concurrency;
    let live = if args.in_place {
        let live = Store::open(&config.lake_config().store())?;
        let records = runtime.block_on(crate::lake::log::all_records(&live))?;
        if let Some(record) = replace::done(&records, &replay.version) {
            // Done before (maybe up to a crash after the swap): finish the idempotent steps.
            runtime.block_on(crate::lake::republish(
                &live,
                record,
                concurrency,
                &Default::default(),
            ))?;
            eprintln!(
                "version {} is in place already (epoch {} of {}): nothing to do; replay into a new version to \
                 run it again",
                replay.version, record.epoch, live.url
            );
            return Ok(ExitCode::SUCCESS);
        }
        let from = match args.from_time {
            // The same start a replay of the stream takes: the first message stored at or after it.
            Some(ms) => runtime.block_on(replace::first_sequence_at(&live, &records, ms))?,
            None => args.from_seq.unwrap_or(1),
        };
        let plan = runtime.block_on(replace::plan(&live, &records, from, args.to_seq))?;
        eprintln!(
            "weir replay {} in place: sequences {}..={} ({} committed messages){}, starting from {}",
            replay.version,
            plan.from,
            plan.until,
            plan.sequences.count(),
            if plan.from != from || args.to_seq.is_some_and(|t| t != plan.until) {
                " (widened to whole commits and files)"
            } else {
                ""
            },
            match &plan.state_of {
                Some((host, epoch)) => format!("the plugin state of epoch {epoch} ({host})"),
                None => "no plugin state (the start of the stream)".into(),
            }
        );
        replay.start = ReplayStart::Sequence(plan.from);
        // Planned by sequence from here on (a time start was resolved above).
        replay.until = Some(plan.until);
        replay.in_place = Some(plan);
        Some(live)
    } else {
        None
    };
    for spec in &args.stages {
        let Some((stage, file)) = spec.split_once('=') else {
            bail!("--stage {spec:?}: write STAGE=FILE (e.g. enrich=build/enrich.wasm)");
        };
        let file = std::fs::canonicalize(file)
            .with_context(|| format!("--stage {spec}: cannot read {file}"))?;
        let Some(section) = config.stages.iter_mut().find(|s| s.name == stage) else {
            let names: Vec<&str> = config.stages.iter().map(|s| s.name.as_str()).collect();
            bail!(
                "--stage {spec}: no stage named {stage:?} (stages: {})",
                names.join(", ")
            );
        };
        let span = section.plugin.span();
        section.plugin = toml::Spanned::new(span, file.to_string_lossy().into_owned());
    }
    config.lake.url = args
        .lake
        .clone()
        .unwrap_or_else(|| replay.lake_url(&config.lake_config().url));
    if let Some(nats) = args.nats.filter(|n| !n.is_empty()) {
        config.nats.url = nats;
    }
    // A replay is a batch job: no API, no watched directory, no source.
    config.api.listen = String::new();
    config.replay = Some(replay.clone());
    let version_store = config.lake_config().store();
    let started_at = std::time::Instant::now();
    let signal = super::shutdown_signal(&runtime);
    let (shared, ended) = runtime.block_on(async {
        let mut shared = None;
        crate::pipeline::service::run(config, signal, |started| {
            let from = match &args.from_bronze {
                Some(_) => "bronze, staged in a stream",
                None => "the stream",
            };
            eprintln!(
                "weir replay {}: from {from} on {} into {}",
                args.version, started.nats_url, started.lake
            );
            shared = Some(started.shared.clone());
        })
        .await
        .map(|ended| (shared, ended))
    })?;
    if let Some(shared) = shared {
        let c = &shared.counters;
        use std::sync::atomic::Ordering::Relaxed;
        eprintln!(
            "replayed {} events in {:.1}s: {} to silver, {} dropped, {} quarantined ({} already in the version, skipped)",
            c.received.load(Relaxed),
            started_at.elapsed().as_secs_f64(),
            c.silver.load(Relaxed),
            c.dropped.load(Relaxed),
            c.quarantined.load(Relaxed),
            c.skipped_committed.load(Relaxed),
        );
    }
    if ended != crate::pipeline::service::Ended::Replayed {
        // A script chaining `weir replay && publish` must not go on with part of a version.
        eprintln!(
            "weir replay {}: interrupted before the end; run the same command again to resume",
            args.version
        );
        return Ok(ExitCode::FAILURE);
    }
    if let (Some(live), Some(plan)) = (live, &replay.in_place) {
        let version = Store::open(&version_store)?;
        let record = runtime.block_on(replace::put_in_place(
            &live,
            &version,
            &replay.version,
            plan,
            concurrency,
        ))?;
        eprintln!(
            "put in place in {}: {} files replace {} live files of sequences {}..={} (epoch {})",
            live.url,
            record.files().count(),
            record.replaces.len(),
            plan.from,
            plan.until,
            record.epoch
        );
    }
    Ok(ExitCode::SUCCESS)
}
