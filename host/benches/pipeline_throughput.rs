//! End to end: events/s from a pre-filled JetStream stream through the whole default pipeline
//! (`deploy/pipelines/wikimedia.toml`: parse, filter → enrich → dedupe → quality → four aggregates, bronze,
//! silver, gold, drops and quarantine as Parquet, commits, acks) to committed Parquet on local disk, with
//! `weir run` as its own process on this machine; its peak RSS; and the hot-swap pause (p50/p99) of
//! deploys of the enrich stage made through the API while the events flow. Then `weir lake compact` over the
//! lake it wrote (files merged, rows/s).
//!
//! Run with `make bench` (or `cargo bench -p weir --bench pipeline_throughput`; it runs
//! `target/release/weir`, so build that first). `WEIR_BENCH_EVENTS` sets the number of events (default
//! 1,000,000), `WEIR_BENCH_SWAPS` the number of hot swaps (default 20), `WEIR_BENCH_WRAPPER` a command to
//! run `weir run` under (`heaptrack`, `perf record -g`), `WEIR_BENCH_MODE` the consumer mode (`shared`, the
//! default pipeline's, or `exclusive`: one host, no acks).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use weir::bus::NatsServer;
use weir::config::Config;
use weir::ingest::{Ingest, IngestConfig};
use weir::lake::store::{Store, StoreConfig};
use weir::source::client::SseConfig;
use weir::source::generate::{GenConfig, Generator};
use weir::source::serve::{Events, ServeConfig, spawn_local};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Fills the pipeline's stream with `count` generated events through the real ingest; returns the last
/// sequence.
async fn prefill(nats: &async_nats::Client, config: &Config, count: u64) -> u64 {
    // Fresh (the quality stage quarantines events over an hour old), spread over 50 minutes of event time,
    // with a little of every fault.
    let span_ms = 50 * 60 * 1000;
    let generator = Generator::new(GenConfig {
        seed: 1,
        start_ms: now_ms() - span_ms - 60_000,
        events_per_s: count as f64 / (span_ms as f64 / 1000.0),
        malformed: 0.001,
        canary: 0.001,
        late: 0.002,
        future: 0.001,
        ..GenConfig::default()
    });
    let serve = ServeConfig::new(Events::Generated {
        generator,
        count: Some(count),
    });
    let (url, server) = spawn_local(Arc::new(serve)).await.unwrap();
    let source = SseConfig {
        url,
        ..SseConfig::default()
    };
    let ingest_config = IngestConfig {
        name: "bench-prefill".into(),
        ..config.ingest.clone()
    };
    let mut ingest = Ingest::new(nats.clone(), source, config.stream.clone(), ingest_config)
        .await
        .unwrap();
    let stats = ingest.stats().clone();
    // Stop once the stream confirmed every event (or the ingest dropped it as a canary). Stopping at the last
    // one *received* could cut off its publish (a stop leaves it to the next start, which reads it from the
    // source again; the bench has none), and one run in ~40 then measured 999,999 events.
    let done = async move {
        let settled = |s: &weir::ingest::IngestStats| {
            s.publish.published.load(Ordering::Relaxed)
                + s.publish.duplicates.load(Ordering::Relaxed)
                + s.canaries_dropped.load(Ordering::Relaxed)
        };
        while settled(&stats) < count {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    ingest.run(done).await.unwrap();
    server.abort();
    let js = async_nats::jetstream::new(nats.clone());
    let mut stream = js.get_stream(&config.stream.name).await.unwrap();
    stream.info().await.unwrap().state.last_sequence
}

/// `pid` itself or its first descendant named `weir` (or `weir-…`, a copy of another build to compare).
fn weir_process(pid: u32) -> Option<u32> {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    let comm = comm.trim();
    if comm == "weir" || comm.starts_with("weir-") {
        return Some(pid);
    }
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
    children
        .split_whitespace()
        .filter_map(|c| c.parse().ok())
        .find_map(weir_process)
}

/// Peak resident set of a process, in bytes (`VmHWM`).
fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// CPU seconds (user and system) a process has used so far: steadier than wall time on a shared machine,
/// where other tenants' load stretches every run.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) end with `)`; utime and stime are 14th and 15th.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // The kernel's USER_HZ is 100 on every Linux this runs on.
    Some(ticks as f64 / 100.0)
}

/// The values of one Prometheus series by one of its labels, in the order `/metrics` lists them.
fn series(metrics: &str, name: &str, label: &str) -> Vec<(String, f64)> {
    let prefix = format!("{name}{{");
    let label = format!("{label}=\"");
    metrics
        .lines()
        .filter_map(|line| line.strip_prefix(prefix.as_str()))
        .filter_map(|rest| {
            let value = rest.split(label.as_str()).nth(1)?.split('"').next()?;
            Some((value.to_string(), rest.rsplit(' ').next()?.parse().ok()?))
        })
        .collect()
}

async fn committed(store: &Store) -> u64 {
    weir::lake::log::all_records(store)
        .await
        .map(|r| r.iter().map(|r| r.sequences.count()).sum())
        .unwrap_or(0)
}

fn main() {
    let events = env("WEIR_BENCH_EVENTS", 1_000_000);
    let swaps = env("WEIR_BENCH_SWAPS", 20);
    let weir = root().join("target/release/weir");
    assert!(
        weir.exists(),
        "{} is missing: `cargo build --release -p weir` first (make bench does)",
        weir.display()
    );
    let enrich = root().join("target/wasm32-wasip2/plugin/weir_plugin_enrich.wasm");
    assert!(enrich.exists(), "build the plugins first (`make plugins`)");
    let config_path = root().join("deploy/pipelines/wikimedia.toml");
    let config = Config::load(&config_path).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let server = NatsServer::start(&dir.path().join("nats"), None)
        .expect("a nats-server (run `make setup`)");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let nats = runtime
        .block_on(weir::bus::connect(&server.url(), "bench"))
        .unwrap();
    let started = Instant::now();
    let last = runtime.block_on(prefill(&nats, &config, events));
    println!(
        "pipeline_throughput: {events} generated events pre-filled into JetStream in {:.1}s; the default pipeline \
         ({} stages) to Parquet on local disk",
        started.elapsed().as_secs_f64(),
        config.stages.len()
    );

    let mode = std::env::var("WEIR_BENCH_MODE").unwrap_or_else(|_| "shared".into());
    println!("  consumer mode: {mode}");
    let lake = dir.path().join("lake");
    let log = dir.path().join("weir.log");
    // `WEIR_BENCH_WRAPPER="heaptrack"` (or any command) runs `weir run` under it, for profiles.
    let wrapper = std::env::var("WEIR_BENCH_WRAPPER").unwrap_or_default();
    let mut words = wrapper.split_whitespace();
    let mut command = match words.next() {
        Some(program) => {
            let mut c = Command::new(program);
            c.args(words).arg(&weir);
            c
        }
        None => Command::new(&weir),
    };
    let mut child = command
        .args(["run", "--no-source", "--api", "127.0.0.1:0", "--config"])
        .arg(&config_path)
        .args(["--nats", &server.url()])
        .args(["--consumer-mode", &mode])
        .arg("--lake")
        .arg(&lake)
        .current_dir(dir.path())
        .env("WEIR_PLUGIN_DIR", enrich.parent().unwrap())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id();
    let launched = Instant::now();
    // nats-server's CPU while `weir run` works: its share of the same two cores.
    let nats_cpu_before = cpu_seconds(server.pid()).unwrap_or(0.0);
    let store = Store::open(&StoreConfig {
        url: lake.to_string_lossy().into_owned(),
        ..StoreConfig::default()
    })
    .unwrap();

    // The API address, from the start-up line.
    let api = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(at) = text.find("look here: http://") {
            break text[at + "look here: ".len()..]
                .split("/metrics")
                .next()
                .unwrap()
                .to_string();
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("weir run exited ({status}): {text}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let ready_after = launched.elapsed();

    // Swaps while the events flow, spaced over the first seconds; then wait for the last commit.
    let http = reqwest::Client::new();
    let wasm = std::fs::read(&enrich).unwrap();
    let (mut first_commit, mut done) = (None, None);
    let mut swapped = 0;
    let mut last_swap = Instant::now();
    runtime.block_on(async {
        loop {
            let n = committed(&store).await;
            if n > 0 && first_commit.is_none() {
                first_commit = Some(launched.elapsed());
            }
            if n >= last {
                done = Some(launched.elapsed());
                break;
            }
            if n > 0 && swapped < swaps && last_swap.elapsed() > Duration::from_millis(300) {
                let r = http
                    .post(format!("{api}/api/v1/plugins/enrich"))
                    .body(wasm.clone())
                    .send()
                    .await
                    .unwrap();
                assert!(
                    r.status().is_success(),
                    "deploy: {}",
                    r.text().await.unwrap()
                );
                swapped += 1;
                last_swap = Instant::now();
            }
            assert!(
                launched.elapsed() < Duration::from_secs(900),
                "not done after 15 minutes: {} of {last} committed",
                n
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let get_json = |path: &str| -> serde_json::Value {
        runtime.block_on(async {
            let response = http.get(format!("{api}{path}")).send().await.unwrap();
            serde_json::from_str(&response.text().await.unwrap()).unwrap()
        })
    };
    let pipeline = get_json("/api/v1/pipeline");
    let plugins = get_json("/api/v1/plugins");
    let reasons = get_json("/api/v1/quarantine/reasons");
    let metrics = runtime.block_on(async {
        let response = http.get(format!("{api}/metrics")).send().await.unwrap();
        response.text().await.unwrap()
    });
    // Under a wrapper, `weir run` is a process further down.
    let weir_pid = weir_process(pid).unwrap_or(pid);
    let rss = peak_rss(weir_pid).unwrap_or(0);
    let cpu = cpu_seconds(weir_pid).unwrap_or(0.0);
    let nats_cpu = cpu_seconds(server.pid()).unwrap_or(0.0) - nats_cpu_before;
    Command::new("kill")
        .args(["-TERM", &weir_pid.to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "weir run did not stop cleanly");

    let done = done.unwrap();
    let seconds = done.as_secs_f64() - ready_after.as_secs_f64();
    let bytes: u64 = walk(&lake);
    println!(
        "  {:.0} events/s end to end ({last} events committed {seconds:.1}s after the API came up; start-up {:.1}s)",
        last as f64 / seconds,
        ready_after.as_secs_f64()
    );
    println!(
        "  CPU of weir run: {cpu:.1} s ({:.1} µs per event); of nats-server meanwhile: {nats_cpu:.1} s ({:.1} µs per event)",
        cpu * 1e6 / last as f64,
        nats_cpu * 1e6 / last as f64
    );
    // Where the pipeline's thread spent its time, and the plugins theirs.
    let show = |values: Vec<(String, f64)>| {
        let shown: Vec<String> = values
            .iter()
            .map(|(label, v)| format!("{label} {v:.1}"))
            .collect();
        shown.join(", ")
    };
    let phases = series(&metrics, "weir_pipeline_thread_seconds_total", "phase");
    println!("  pipeline thread, s: {}", show(phases));
    let calls = series(&metrics, "weir_plugin_call_seconds_sum", "stage");
    println!("  time in plugin calls, s: {}", show(calls));
    let counts = series(&metrics, "weir_plugin_snapshots_total", "stage");
    let snapshots: Vec<String> = series(&metrics, "weir_plugin_snapshot_seconds_total", "stage")
        .into_iter()
        .zip(counts)
        .filter(|((_, seconds), _)| *seconds > 0.0)
        .map(|((stage, seconds), (_, count))| format!("{stage} {count} in {seconds:.1}"))
        .collect();
    println!("  of which snapshots, s: {}", snapshots.join(", "));
    println!(
        "  peak RSS of weir run: {:.0} MB; lake: {:.0} MB ({} commits)",
        rss as f64 / (1 << 20) as f64,
        bytes as f64 / (1 << 20) as f64,
        pipeline["commits"]
    );
    let mut tables: Vec<(u64, String)> = std::fs::read_dir(&lake)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| {
                    (
                        walk(&e.path()),
                        e.file_name().to_string_lossy().into_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    tables.sort_by(|a, b| b.cmp(a));
    let tables: Vec<String> = tables
        .iter()
        .take(6)
        .map(|(bytes, name)| format!("{name} {:.1}", *bytes as f64 / (1 << 20) as f64))
        .collect();
    println!("  largest in the lake, MB: {}", tables.join(", "));
    println!(
        "  events: {} to silver, {} dropped by rules, {} quarantined {}",
        pipeline["silver"], pipeline["dropped"], pipeline["quarantined"], reasons["since_start"]
    );
    let mb = |v: &serde_json::Value| v.as_u64().unwrap_or(0) as f64 / (1 << 20) as f64;
    let stages: Vec<String> = plugins["plugins"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|p| {
                    let stats = &p["stats"];
                    let snapshot = mb(&stats["snapshot_bytes"]);
                    if snapshot > 0.0 {
                        format!(
                            "{} {:.0} (snapshot {snapshot:.0}, held packed {:.1})",
                            p["stage"].as_str().unwrap_or("?"),
                            mb(&stats["memory_bytes"]),
                            mb(&stats["snapshot_packed_bytes"])
                        )
                    } else {
                        format!(
                            "{} {:.0}",
                            p["stage"].as_str().unwrap_or("?"),
                            mb(&stats["memory_bytes"])
                        )
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    println!("  plugin memory, MB: {}", stages.join(", "));
    let pauses = &pipeline["swap_pauses"];
    println!(
        "  hot-swap pause of enrich under load: p50 {} µs, p99 {} µs over {} swaps",
        pauses["p50_us"], pauses["p99_us"], pauses["count"]
    );
    // Each new version is started twice and self-tested before its swap, off the pipeline's thread (on it,
    // until 2026-12-05, where it stalled the pipeline this long per deploy).
    let mut prepared: Vec<f64> = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("prepared a new version off the pipeline thread"))
        .filter_map(|l| {
            l.split("took_ms=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    prepared.sort_by(f64::total_cmp);
    if let (Some(first), Some(last)) = (prepared.first(), prepared.last()) {
        println!(
            "  a new version's start and self-test, off the pipeline thread: p50 {:.1} ms, {first:.1}-{last:.1} ms over {}",
            prepared[prepared.len() / 2],
            prepared.len()
        );
    }

    // The run's small files merged, as `weir run` does hourly, here of every hour (the current one too).
    let started = Instant::now();
    let out = Command::new(&weir)
        .args([
            "lake",
            "compact",
            "--json",
            "--include-current",
            "--min-files",
            "2",
        ])
        .arg("--lake")
        .arg(&lake)
        .output()
        .unwrap();
    let seconds = started.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "weir lake compact: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let merged = report["merged"].as_array().cloned().unwrap_or_default();
    let sum = |key: &str| -> u64 { merged.iter().map(|m| m[key].as_u64().unwrap_or(0)).sum() };
    println!(
        "  compaction (weir lake compact): {} files into {} in {seconds:.1} s ({:.0} rows/s; {:.1} → {:.1} MB)",
        sum("files"),
        merged.len(),
        sum("rows") as f64 / seconds,
        sum("bytes_before") as f64 / (1 << 20) as f64,
        sum("bytes_after") as f64 / (1 << 20) as f64
    );
    drop(server);
}

fn walk(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let meta = e.metadata().unwrap();
            total += if meta.is_dir() {
                walk(&e.path())
            } else {
                meta.len()
            };
        }
    }
    total
}
