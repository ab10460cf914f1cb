//! Starting and stopping the whole service: a local nats-server when no NATS URL is configured, the stream,
//! the optional in-process ingest, the consumer, the lake, the plugins, the API, the watched plugin
//! directory, and the processor. Stopping (SIGINT, SIGTERM) finishes the batch in hand, commits, acks, and
//! stops everything in order.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::chain::Chain;
use super::runner::{self, Processor};
use super::shared::{Control, Counters, Health, Pauses, Phase, Recent, Shared};
use crate::bus::NatsServer;
use crate::bus::lease::{self, Lease};
use crate::config::Config;
use crate::ingest::Ingest;
use crate::lake::Lake;
use crate::runtime::Loader;

/// What `run` reports once the service is up (for the "where to look" line and for tests).
pub struct Started {
    pub api: Option<std::net::SocketAddr>,
    pub nats_url: String,
    pub lake: String,
    pub source: Option<String>,
    pub shared: Arc<Shared>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// How a run that did not fail ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// Asked to stop (or its lease went to another host).
    Stopped,
    /// A replay read everything it was to read.
    Replayed,
}

/// Runs the pipeline until `stop` resolves (or a replay is done); calls `started` once everything is up.
pub async fn run(
    config: Config,
    stop: impl std::future::Future<Output = ()>,
    started: impl FnOnce(&Started),
) -> Result<Ended> {
    // No URL: the local server another Weir process runs on this data directory, else one of our own.
    let shared_local = config
        .nats
        .url
        .is_empty()
        .then(|| NatsServer::running(&config.nats.data_dir))
        .flatten();
    let local = if config.nats.url.is_empty() && shared_local.is_none() {
        let dir = config.nats.data_dir.clone();
        let port = (config.nats.port != 0).then_some(config.nats.port);
        Some(
            tokio::task::spawn_blocking(move || NatsServer::start(&dir, port))
                .await?
                .context("cannot start the local nats-server")?,
        )
    } else {
        None
    };
    let nats_url = local
        .as_ref()
        .map(NatsServer::url)
        .or(shared_local)
        .unwrap_or_else(|| config.nats.url.clone());
    let client = crate::bus::connect(&nats_url, &format!("weir-{}", config.pipeline.name)).await?;
    let js = async_nats::jetstream::new(client.clone());
    // A replay from bronze reads a stream of its own, filled here from the live lake's bronze table.
    let mut config = config;
    if let Some(replay) = config.replay.clone()
        && let Some(bronze) = &replay.bronze
    {
        let mut live = config.lake_config();
        live.url = bronze.clone();
        let store = crate::lake::store::Store::open(&live.store())
            .with_context(|| format!("the lake to replay bronze from ({bronze})"))?;
        // What a replay that ran before holds already is not staged again.
        let version = crate::lake::store::Store::open(&config.lake_config().store())?;
        let done = crate::lake::log::read(&version)
            .await
            .context("reading the replay version's commit log")?
            .committed;
        config.stream = replay.staging_stream(&config.stream);
        super::replay::stage_bronze(&js, &store, &config.stream, &replay, &done).await?;
    }
    config.stream.ensure(&js).await?;
    // An exclusive reader takes its lease before it touches anything: opening the lake cleans up the staged
    // files of an earlier run of this host, which a second process under the same host name would take for
    // its own.
    // Kept from now until the last commit is done (start-up can outlast the lease); one lost to another host
    // stops the run. A start that fails leaves it to run out, or to the next run of this host.
    let host = config.host();
    let mut lease = match config.exclusive() {
        true => Some(
            Lease::acquire(
                &js,
                &config.pipeline.name,
                &host,
                2 * lease::TTL,
                config.stream.replicas,
            )
            .await?
            .keep(),
        ),
        false => {
            // Replays read beside a live pipeline, whatever its mode.
            if config.replay.is_none()
                && let Some(who) = lease::holder(&js, &config.pipeline.name).await?
            {
                anyhow::bail!(
                    "pipeline {} is read alone by {who} (consumer.mode = \"exclusive\"): stop it first, \
                     or set consumer.mode = \"shared\" on every host to share the stream",
                    config.pipeline.name
                );
            }
            None
        }
    };

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);

    // The source, in process: live, or generated locally when the live stream cannot be reached.
    let mut ingest_task = None;
    let mut source_url = None;
    let mut fallback_server = None;
    let mut ingest_stats = None;
    // A replay reads what the stream holds already; the live pipeline does the ingesting.
    let source = config.source.as_ref().filter(|_| config.replay.is_none());
    if let Some(source) = source {
        let mut source = source.clone();
        let mut ingest_config = config.ingest.clone();
        if config.pipeline.offline_fallback && !reachable(&source).await {
            let (url, task) = offline_source().await?;
            tracing::warn!(
                live = %source.url,
                local = %url,
                "the source cannot be reached: serving generated events locally instead (weir serve-sse)"
            );
            source.url = url;
            // A position of its own: the live stream's would mean nothing to the local server, and the
            // local server's must never be sent to the live stream.
            ingest_config.name = format!("{}-offline", ingest_config.name);
            fallback_server = Some(task);
        }
        source_url = Some(source.url.clone());
        let mut ingest =
            Ingest::new(client.clone(), source, config.stream.clone(), ingest_config).await?;
        ingest_stats = Some(ingest.stats().clone());
        let mut stop = stop_rx.clone();
        ingest_task = Some(tokio::spawn(async move {
            ingest
                .run(async move {
                    let _ = stop.changed().await;
                })
                .await
        }));
    }

    let lake = Lake::open(config.lake_config(), &host, config.exclusive())
        .await
        .context("cannot open the lake")?;
    // An exclusive reader starts where the lake's commit log says, so the lake comes first.
    let reader = if config.exclusive() {
        runner::exclusive_reader(&js, &config, &lake).await?
    } else {
        runner::Reader::Shared(runner::consumer(&js, &config).await?)
    };
    let replay_until = match &config.replay {
        Some(replay) => Some(super::replay::last_sequence(&js, &config.stream.name, replay).await?),
        None => None,
    };
    let replay_done = {
        let consumer = match &reader {
            runner::Reader::Shared(consumer) => Some(consumer.clone()),
            runner::Reader::Exclusive { .. } => None,
        };
        async move {
            match (replay_until, consumer) {
                (Some(until), Some(consumer)) => super::replay::finished(consumer, until).await,
                _ => std::future::pending().await,
            }
        }
    };
    let lake_store = lake.store().clone();

    // Deploys made on one host reach the others through JetStream (replays run the versions they are
    // given). The host's record of deploys is brought to the cluster's before the plugins start.
    let deploys = match config.replay {
        Some(_) => None,
        None => open_deploys(&js, &config).await,
    };
    let pause = open_pause(&js, &config, &host).await;
    if let Some(deploys) = &deploys
        && let Err(e) = super::cluster::prepare_start(deploys, &config).await
    {
        tracing::warn!("starting on this host's own record of deploys, not the cluster's: {e:#}");
    }

    // Plugins compile off the async threads (a cold Python component takes seconds).
    let loader = match &config.plugins.cache_dir {
        Some(dir) if dir.as_os_str() == "off" => Loader::new(None),
        Some(dir) => Loader::new(Some(dir.clone())),
        None => Loader::with_default_cache(),
    };
    let (config, loader, started_at) = (Arc::new(config), loader, Instant::now());
    // Replays judge "now" by when each batch was ingested (see `Clock::Shared`); the live pipeline by the
    // system clock.
    let clock = match config.replay {
        Some(_) => crate::runtime::Clock::shared(),
        None => crate::runtime::Clock::System,
    };
    let (plugins, stages, previous) = {
        let (config, loader, clock) = (config.clone(), loader.clone(), clock.clone());
        tokio::task::spawn_blocking(move || runner::start_plugins(&config, &loader, &clock))
            .await??
    };
    let extra_reads = config
        .silver
        .columns
        .iter()
        .map(|c| crate::event::JsonPath::parse(&c.path).map_err(anyhow::Error::msg))
        .collect::<Result<Vec<_>>>()?;
    let mut chain = Chain::with_shape(runner::shape(&config)?, plugins, extra_reads)?
        .named(&stages.names)
        .on_error(&stages.on_error);
    // A replay in place starts from the live pipeline's state just before its range (once: after that
    // from its version's own commits).
    let state = match config.replay.as_ref().and_then(|r| r.in_place.as_ref()) {
        Some(plan) if lake.last_epoch() == 0 => &plan.state[..],
        _ => lake.state_chain(),
    };
    super::state::restore(&mut chain, &stages.names, state)?;
    tracing::info!(
        stages = %runner::describe(&stages.names, &chain),
        restored_commits = lake.state_chain().len(),
        ms = started_at.elapsed().as_millis() as u64,
        "plugins ready"
    );

    let (control_tx, control_rx) = tokio::sync::mpsc::channel::<Control>(16);
    let shared = Arc::new(Shared {
        pipeline: config.pipeline.name.clone(),
        counters: Counters::default(),
        health: Health::default(),
        plugins: Default::default(),
        recent: std::sync::Mutex::new(Recent::with_gold_rows(config.api.recent_gold_rows)),
        pauses: Pauses::default(),
        ingest: arc_swap::ArcSwap::from_pointee(ingest_stats),
        control: control_tx,
        stages: stages.names.clone(),
        lake: lake_store.clone(),
        started_ms: now_ms(),
    });
    {
        // Rows committed by earlier runs are in the lake alone: answers for their windows read it.
        let mut recent = shared.recent.lock().expect("not poisoned");
        for table in lake.gold_tables() {
            recent.gold_in_lake(table);
        }
    }
    // A host starting while the pipeline is paused takes no event before it is resumed.
    let pause_seen = match &pause {
        super::pause::Scope::Cluster(pausing) => super::pause::at_start(pausing, &shared).await,
        _ => None,
    };
    shared.health.store_reachable.store(true, Ordering::Relaxed);
    shared.health.plugins_loaded.store(true, Ordering::Relaxed);
    shared.health.nats_connected.store(true, Ordering::Relaxed);
    let _ = shared.health.nats.set(client.clone());

    // The commit log as the API's queries read it, kept up to date (a replay has no API).
    let log = Arc::new(crate::lake::log::CachedLog::default());
    if config.replay.is_none() && !config.api.listen.is_empty() {
        tokio::spawn(log.clone().keep_up(
            lake_store.clone(),
            crate::lake::log::CachedLog::KEEP_UP_EVERY,
            stop_rx.clone(),
        ));
    }
    let api = if config.api.listen.is_empty() {
        None
    } else {
        let listener = tokio::net::TcpListener::bind(&config.api.listen)
            .await
            .with_context(|| format!("api.listen: cannot listen on {}", config.api.listen))?;
        let addr = listener.local_addr()?;
        if !addr.ip().is_loopback() && config.api_token().is_none() {
            tracing::warn!(
                %addr,
                "the API listens beyond this machine without a token: anyone who reaches it can deploy \
                 plugins, pause and replay. Set api.token or WEIR_API_TOKEN"
            );
        }
        let options = crate::api::ApiOptions {
            token: config.api_token(),
            max_upload_bytes: config.api.max_upload_bytes,
            loader: loader.clone(),
            replay: Some(crate::api::ReplayContext {
                config_file: std::fs::canonicalize(&config.file).unwrap_or(config.file.clone()),
                nats_url: nats_url.clone(),
                lake: config.lake.url.clone(),
                lake_endpoint: config.lake.endpoint.clone(),
                // Absolute, so the path the API reports can be opened from anywhere.
                log_dir: {
                    let dir = config.nats.data_dir.parent().map_or_else(
                        || std::path::PathBuf::from(".weir"),
                        std::path::Path::to_path_buf,
                    );
                    std::path::absolute(&dir).unwrap_or(dir)
                },
            }),
            lake: Some(lake_store.clone()),
            log: log.clone(),
            deploys: deploys.clone(),
            pause: pause.clone(),
        };
        let router = crate::api::router(shared.clone(), options);
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stop.changed().await;
                })
                .await;
        });
        Some(addr)
    };

    let watcher = config
        .watch_dir()
        .filter(|_| config.replay.is_none())
        .map(|dir| {
            tokio::spawn(watch_plugins(
                dir,
                shared.clone(),
                loader.clone(),
                stop_rx.clone(),
            ))
        });

    let compactor = (config.replay.is_none() && !config.lake.compact_every.is_zero()).then(|| {
        tokio::spawn(compact_now_and_then(
            lake_store.clone(),
            config.lake.clone(),
            shared.clone(),
            stop_rx.clone(),
        ))
    });

    // Room for one pull request's worth of micro-batches, so the processor keeps going while the fetch task
    // (on the I/O runtime, shared with acks and uploads) is busy; still bounded, for backpressure.
    let (batches_tx, batches_rx) = super::handover::channel(16);
    if let runner::Reader::Shared(consumer) = &reader {
        let every = runner::extend_every(consumer.cached_info().config.ack_wait);
        tokio::spawn(batches_tx.keeper().run(client.clone(), every));
    }
    let pending_task = tokio::spawn(runner::measure_pending(
        reader.clone(),
        shared.clone(),
        stop_rx.clone(),
    ));
    let fetch_task = tokio::spawn(runner::fetch(
        reader,
        config.consumer.batch,
        batches_tx,
        shared.clone(),
        stop_rx.clone(),
    ));
    let configured_files = stages.configured.clone();
    let configured = stages
        .names
        .iter()
        .cloned()
        .zip(stages.configured.iter().cloned())
        .collect();
    let mut processor = Processor::new(
        chain,
        stages,
        lake,
        shared.clone(),
        client.clone(),
        tokio::runtime::Handle::current(),
        &config,
    )?;
    processor.until = replay_until;
    if let Some(lease) = &lease {
        processor.lease_lost = lease.lost();
        let fence = lease.fence();
        processor.lease_fence = Some(Arc::new(move || fence.time_left()));
    }
    processor.set_previous(previous);
    processor.clock = clock;
    if let super::pause::Scope::Cluster(pausing) = pause {
        tokio::spawn(super::pause::follow(
            pausing,
            shared.clone(),
            pause_seen,
            stop_rx.clone(),
        ));
    }
    let (announcer, reporter, follower) = match deploys {
        Some(deploys) => {
            // Replays and exclusive readers have no other hosts' windows to adopt.
            let adopt_after = config.consumer.adopt_after;
            if !config.exclusive() && config.replay.is_none() && !adopt_after.is_zero() {
                let presence = Arc::new(super::adopt::Presence::default());
                tokio::spawn(super::adopt::watch(
                    deploys.clone(),
                    presence.clone(),
                    stop_rx.clone(),
                ));
                processor.adopter = Some(super::adopt::Adopter::new(presence, adopt_after));
            }
            let (to, announcements) = tokio::sync::mpsc::unbounded_channel();
            let herald =
                super::cluster::Herald::new(to, host.clone(), config.deployed(), &configured_files)
                    .await;
            processor.announce_to(herald);
            (
                Some(tokio::spawn(super::cluster::announce(
                    deploys.clone(),
                    config.deployed(),
                    announcements,
                ))),
                Some(tokio::spawn(super::cluster::report(
                    deploys.clone(),
                    shared.clone(),
                    host.clone(),
                    stop_rx.clone(),
                ))),
                Some(tokio::spawn(super::cluster::follow(
                    deploys,
                    shared.clone(),
                    loader.clone(),
                    configured,
                    config.deployed(),
                    stop_rx.clone(),
                ))),
            )
        }
        None => (None, None, None),
    };
    let processor_thread = std::thread::Builder::new()
        .name("weir-processor".into())
        .spawn(move || process_loop(processor, batches_rx, control_rx))?;

    started(&Started {
        api,
        nats_url: nats_url.clone(),
        lake: lake_store.url.clone(),
        source: source_url,
        shared: shared.clone(),
    });

    // Run until asked to stop, or until the processor fails.
    let processor_done = tokio::task::spawn_blocking(move || processor_thread.join());
    tokio::pin!(processor_done);
    tokio::pin!(stop);
    let lease_lost = async {
        match lease.as_mut() {
            Some(lease) => lease.ended().await,
            None => std::future::pending().await,
        }
    };
    let (early, replayed) = tokio::select! {
        _ = &mut stop => (None, false),
        _ = replay_done => (None, true),
        done = &mut processor_done => (Some(done), false),
        () = lease_lost => (None, false),
    };
    tracing::info!(
        "stopping: finishing the batch in hand, committing{}",
        if config.exclusive() { "" } else { ", acking" }
    );
    shared.health.stopping.store(true, Ordering::Relaxed);
    let _ = stop_tx.send(true);
    let fetched = match fetch_task.await {
        Ok(fetched) => fetched,
        Err(e) => Err(anyhow::anyhow!("the fetch task failed: {e}")),
    };
    let result = match early {
        Some(done) => done,
        None => processor_done.await,
    };
    let result = match result {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => Err(anyhow::anyhow!("the processor thread panicked")),
        Err(e) => Err(e.into()),
    };
    // A pull that failed ends the micro-batches, and the processor stops cleanly after its last commit: the
    // run failed all the same (a supervisor restarts it), unless the processor has an error of its own.
    let result = result.and_then(|r| fetched.map(|()| r));
    // Let go of the lease (the next run takes it at once), unless it was lost: then that is the error.
    let result = match lease {
        Some(lease) => {
            let kept = lease.finish().await;
            result.and(kept)
        }
        None => result,
    };
    if let Some(task) = ingest_task {
        match task.await {
            Ok(Err(e)) => tracing::error!("ingest: {e:#}"),
            Err(e) => tracing::error!("ingest task: {e}"),
            Ok(Ok(())) => {}
        }
    }
    if let Some(task) = watcher {
        task.abort();
    }
    if let Some(task) = follower {
        task.abort();
    }
    // Its report goes: the other hosts' `/api/v1/plugins` no longer list this one.
    if let Some(task) = reporter {
        let _ = tokio::time::timeout(FINAL_FLUSH_TIMEOUT, task).await;
    }
    // The processor is done, so its sender is gone: what it announced last goes out, if NATS takes it.
    if let Some(mut task) = announcer
        && tokio::time::timeout(FINAL_FLUSH_TIMEOUT, &mut task)
            .await
            .is_err()
    {
        task.abort();
        let then = match config.deployed() {
            Some(_) => {
                "this host puts it at its next start, unless another host deploys to the stage first"
            }
            None => {
                "with plugins.deployed_dir = \"\" nothing keeps it: deploy it again once NATS is back"
            }
        };
        tracing::warn!(
            "the last deploy or rollback did not reach the pipeline's other hosts: {then}"
        );
    }
    pending_task.abort();
    if let Some(task) = compactor {
        // A compaction cut short commits nothing, or finishes at the next run: both leave the tables whole.
        task.abort();
    }
    if let Some(task) = fallback_server {
        task.abort();
    }
    // A finished replay's consumer goes; an interrupted one stays, so running it again resumes.
    if result.is_ok() && replayed {
        super::replay::remove_consumer(&js, &config.stream.name, &config.durable()).await;
        if config.replay.as_ref().is_some_and(|r| r.bronze.is_some()) {
            super::replay::remove_staging(&js, &config.stream.name).await;
        }
    }
    // What is still buffered (the last acks) goes out, if the server is there to take it: a server that went
    // away first (killed with Weir's whole control group, say) held this flush, and the stop, forever.
    if tokio::time::timeout(FINAL_FLUSH_TIMEOUT, client.flush())
        .await
        .is_err()
    {
        tracing::warn!(
            "NATS did not answer the last flush; what it did not take comes again, skipped as committed"
        );
    }
    drop(client);
    if let Some(mut server) = local {
        tokio::task::spawn_blocking(move || server.stop()).await?;
    }
    result.map(|()| match replayed {
        true => Ended::Replayed,
        false => Ended::Stopped,
    })
}

/// The pipeline's shared record of deploys (`None` if it cannot be opened, said in the log).
async fn open_deploys(
    js: &async_nats::jetstream::Context,
    config: &Config,
) -> Option<crate::bus::deploys::Deploys> {
    let (name, replicas) = (&config.pipeline.name, config.stream.replicas);
    match open_shared("record of deploys", || {
        crate::bus::deploys::Deploys::open(js, name, replicas)
    })
    .await
    {
        Ok(deploys) => Some(deploys),
        Err(e) => {
            tracing::warn!(
                "deploys made on this host do not reach the pipeline's other hosts, nor theirs this one, \
                 and the others do not hear from it (after consumer.adopt_after they take it for gone and \
                 adopt its windows; it then stops at its next commit), until it is restarted with access: \
                 {e:#}"
            );
            None
        }
    }
}

/// Which hosts a pause or resume asked of this one reaches: all of the pipeline's, through its shared
/// record, unless that cannot be opened (said in the log); a replay's alone.
async fn open_pause(
    js: &async_nats::jetstream::Context,
    config: &Config,
    host: &str,
) -> super::pause::Scope {
    if config.replay.is_some() {
        return super::pause::Scope::Alone;
    }
    let (name, replicas) = (&config.pipeline.name, config.stream.replicas);
    match open_shared("record of pauses", || {
        crate::bus::pause::ClusterPause::open(js, name, replicas)
    })
    .await
    {
        Ok(cluster) => {
            super::pause::Scope::Cluster(super::pause::Pausing::new(cluster, host.to_string()))
        }
        Err(e) => {
            tracing::warn!(
                "pauses and resumes asked of this host do not reach the pipeline's other hosts, nor theirs \
                 this one, until it is restarted with access: {e:#}"
            );
            super::pause::Scope::Unshared
        }
    }
}

/// One of the pipeline's shared records in NATS, tried for about half a minute: a JetStream server electing
/// its leader refuses requests for a few seconds, and a host that gave up at once would not hear from the
/// others (nor they from it) for its whole run.
async fn open_shared<T, F>(what: &str, open: impl Fn() -> F) -> Result<T>
where
    F: std::future::Future<Output = Result<T>>,
{
    let mut delay = Duration::from_secs(1);
    for _ in 0..4 {
        match open().await {
            Ok(opened) => return Ok(opened),
            Err(e) => {
                tracing::warn!(
                    "cannot open the pipeline's {what} ({e:#}); trying again in {delay:?}"
                );
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
    }
    open().await
}

/// How long the stop waits for NATS to take what is still buffered.
const FINAL_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Compacts the lake every `compact_every` (first after one interval: a restart does not compact at once).
/// Several hosts sharing a lake may all do so: a compaction that loses the race to another commits nothing.
async fn compact_now_and_then(
    store: crate::lake::Store,
    lake: crate::lake::LakeConfig,
    shared: Arc<Shared>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let counters = &shared.counters;
    let options = crate::lake::compact::Options {
        min_age: lake.compact_after,
        target_bytes: lake.max_file_bytes as u64,
        concurrency: lake.upload_concurrency,
        ..Default::default()
    };
    // Kept between runs: each reads only the commit records created since the one before.
    let mut view = crate::lake::compact::LogView::default();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(lake.compact_every) => {}
            _ = stop.changed() => return,
        }
        match crate::lake::compact::compact(&store, &options, &mut view).await {
            Ok(report) if report.epoch.is_some() => {
                let files = report.merged.iter().map(|m| m.files).sum::<usize>();
                counters.compactions.fetch_add(1, Ordering::Relaxed);
                counters
                    .compacted_files
                    .fetch_add(files as u64, Ordering::Relaxed);
                tracing::info!(
                    epoch = report.epoch,
                    files,
                    into = report.merged.len(),
                    "compacted the lake's small files"
                );
            }
            Ok(_) => {}
            Err(e) => {
                counters.compaction_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    "compaction (tried again in {:?}): {e:#}",
                    lake.compact_every
                );
            }
        }
    }
}

/// The processor thread: batches, control requests between them, commits by size and time; a final
/// commit when the batches end.
fn process_loop(
    mut processor: Processor,
    mut batches: super::handover::Receiver,
    mut control: tokio::sync::mpsc::Receiver<Control>,
) -> Result<()> {
    let runtime = processor.runtime.clone();
    loop {
        while let Ok(request) = control.try_recv() {
            processor.handle(request);
        }
        let waiting = Instant::now();
        let next = runtime.block_on(async {
            tokio::time::timeout(Duration::from_millis(100), batches.recv()).await
        });
        processor.shared.counters.phase(Phase::Waiting, waiting);
        let batch = match next {
            Ok(Some(batch)) => Some(batch),
            Ok(None) => return processor.commit_and_wait(),
            Err(_) => None,
        };
        if let Err(e) = step(&mut processor, batch) {
            // The commit already under way is sound: let it finish and ack before the pipeline stops.
            if let Err(pending) = processor.settle() {
                tracing::error!("the commit under way failed too: {pending:#}");
            }
            return Err(e);
        }
    }
}

/// One turn of the processor: the batch if one came, the commit under way if it finished, a commit if due, a
/// tick if the stream went quiet.
fn step(
    processor: &mut Processor,
    batch: Option<Vec<async_nats::jetstream::Message>>,
) -> Result<()> {
    if let Some(batch) = batch {
        processor.process(batch)?;
    }
    processor.settle_finished()?;
    if processor.commit_due() {
        processor.commit()?;
    }
    processor.adopt_departed()?;
    processor.extend_open_epoch();
    processor.tick();
    Ok(())
}

/// Whether the live source answers at all (a short GET).
async fn reachable(source: &crate::source::client::SseConfig) -> bool {
    crate::tls::install_default_provider();
    let Ok(client) = reqwest::Client::builder()
        .user_agent(source.user_agent.clone())
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(8))
        .build()
    else {
        return false;
    };
    // The response's headers are enough: the body is a stream.
    matches!(
        tokio::time::timeout(Duration::from_secs(8), client.get(&source.url).header("Accept", "text/event-stream").send()).await,
        Ok(Ok(r)) if r.status().is_success()
    )
}

/// A local SSE server of generated events, timed like the live stream (a few hundred per second, event time
/// now), for demos without internet access.
async fn offline_source() -> Result<(String, tokio::task::JoinHandle<Result<()>>)> {
    use crate::source::generate::{GenConfig, Generator};
    use crate::source::serve::{Events, Ids, ServeConfig, spawn_local};
    let rate = 200.0;
    let generator = Generator::new(GenConfig {
        seed: now_ms() as u64,
        start_ms: now_ms(),
        events_per_s: rate,
        duplicates: 0.005,
        malformed: 0.001,
        late: 0.002,
        canary: 0.0005,
        // As the live stream: times out of order by up to a second, resume positions that are times.
        disorder_ms: 1_000,
        ..GenConfig::default()
    });
    let mut config = ServeConfig::new(Events::Generated {
        generator,
        count: None,
    });
    config.rate = Some(rate);
    config.ids = Ids::Timestamps;
    spawn_local(Arc::new(config)).await
}

/// Deploys `<stage>.wasm` files that appear (or change) in `dir`.
async fn watch_plugins(
    dir: PathBuf,
    shared: Arc<Shared>,
    loader: Loader,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    if let Err(e) = std::fs::create_dir_all(&dir) {
        tracing::error!(dir = %dir.display(), "cannot watch the plugin directory: {e}");
        return;
    }
    tracing::info!(dir = %dir.display(), "watching for new plugin versions (<stage>.wasm)");
    let mut seen: std::collections::HashMap<PathBuf, (u64, std::time::SystemTime)> =
        Default::default();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let (Some(stage), Some("wasm")) = (
                path.file_stem()
                    .and_then(|s| s.to_str())
                    .map(str::to_string),
                path.extension().and_then(|e| e.to_str()),
            ) else {
                continue;
            };
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            let Ok(modified) = meta.modified() else {
                continue;
            };
            // Taken once it has stayed the same for a whole tick: a file still being copied in is left
            // alone until it is whole (writing it elsewhere and renaming it in is better still).
            let state = (meta.len(), modified);
            if seen.insert(path.clone(), state) != Some(state) {
                continue;
            }
            seen.remove(&path);
            let handled = if !shared.stages.contains(&stage) {
                tracing::warn!(file = %path.display(), "no stage named {stage:?}; set aside");
                "refused"
            } else {
                let Ok(bytes) = tokio::fs::read(&path).await else {
                    continue;
                };
                let sha256 = crate::runtime::component_sha256(&bytes);
                let running = shared
                    .plugins
                    .load()
                    .iter()
                    .any(|p| p.stage == stage && p.sha256 == sha256);
                if running {
                    // The version that runs already (the last one deployed from here, say): not deployed
                    // twice, only set aside.
                    "deployed"
                } else {
                    match crate::api::deploy(
                        &shared,
                        &loader,
                        &stage,
                        &path,
                        Some(bytes.into()),
                        true,
                    )
                    .await
                    {
                        Ok(label) => {
                            tracing::info!(%stage, plugin = %label, "deployed from the watched directory");
                            "deployed"
                        }
                        // Left where it is: the next run takes it.
                        Err(e) if e == crate::api::STOPPING => return,
                        Err(e) => {
                            tracing::error!(%stage, file = %path.display(), "not deployed: {e}");
                            "refused"
                        }
                    }
                }
            };
            // Set aside once handled: a restart must not deploy it again (after a rollback, or over a
            // configuration that has changed since).
            let aside = path.with_extension(format!("wasm.{handled}"));
            if let Err(e) = std::fs::rename(&path, &aside) {
                tracing::warn!(file = %path.display(), "cannot rename to {}: {e}", aside.display());
            }
        }
    }
}
