//! Rows/s of JSON → silver Parquet on local disk, on one core, for ~1 kB generated `recentchange` events:
//! the host's one-pass parser (only the paths the silver columns read), Arrow columns built straight from the
//! parsed slots, hour partitions, Parquet with zstd, files written to disk. Also the size of the files per
//! million rows.
//!
//! Baseline in the same process: arrow-json's decoder over the same NDJSON (a nested schema of the same
//! fields, the usual way to turn JSON into Arrow) and the same Parquet writer.
//!
//! Run with `make bench` (or `cargo bench -p weir --bench lake_throughput`). `WEIR_BENCH_EVENTS` sets the
//! number of events (default 1,000,000), `WEIR_BENCH_PASSES` the passes (median and best are printed),
//! `WEIR_BENCH_BATCH` the events per batch (default 256, the pipeline's micro-batch).

use std::sync::Arc;
use std::time::Instant;

use arrow_schema::{DataType, Field, Fields, Schema};
use bytes::Bytes;
use weir::event::EventShape;
use weir::lake::files::EpochFiles;
use weir::lake::rows::{Mismatches, SilverColumns, by_partition};
use weir::lake::schema::ColumnSpec;
use weir::pipeline::chain::Chain;
use weir::source::generate::{GenConfig, Generator};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Events per batch by default: the pipeline's micro-batch (`consumer.batch`), which the lake receives.
const BATCH: usize = 256;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

/// The silver columns of the default pipeline.
fn silver_columns() -> Vec<ColumnSpec> {
    #[derive(serde::Deserialize)]
    struct Silver {
        columns: Vec<ColumnSpec>,
    }
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/pipelines/wikimedia.toml"
    );
    let table: toml::Table = toml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let silver: Silver = table["silver"].clone().try_into().unwrap();
    silver.columns
}

/// Writes the finished files under `dir`; returns their total size.
fn write(dir: &std::path::Path, files: Vec<weir::lake::files::FinishedFile>) -> u64 {
    let mut total = 0;
    for f in files {
        let path = dir.join(&f.table).join(&f.relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, f.data.to_bytes().unwrap()).unwrap();
        total += f.data.len();
    }
    total
}

/// Seconds spent in each phase of one weir pass.
#[derive(Default, Clone, Copy)]
struct Phases {
    parse: f64,
    arrow: f64,
    parquet: f64,
    disk: f64,
}

fn weir_pass(
    lines: &[Bytes],
    columns: &[ColumnSpec],
    dir: &std::path::Path,
    batch: usize,
) -> (f64, u64, Phases) {
    let paths = columns
        .iter()
        .map(|c| weir::event::JsonPath::parse(&c.path).unwrap())
        .collect();
    let chain = Chain::with_shape(EventShape::default(), Vec::new(), paths).unwrap();
    let parser = chain.parser();
    let silver = SilverColumns::new(columns.to_vec(), chain.layout()).unwrap();
    let mismatches = Mismatches::default();
    let started = Instant::now();
    let mut files = EpochFiles::new("bench", 128 << 20, Vec::new());
    let mut seq = 0u64;
    let mut phases = Phases::default();
    let mut clock = Instant::now();
    let mut lap = |into: &mut f64| {
        let now = Instant::now();
        *into += (now - clock).as_secs_f64();
        clock = now;
    };
    for chunk in lines.chunks(batch) {
        let events: Vec<_> = chunk
            .iter()
            .enumerate()
            .map(|(i, l)| {
                seq += 1;
                // As the pipeline's intake does.
                if let Some(next) = chunk.get(i + 1) {
                    weir::event::Parser::prefetch(next);
                }
                let mut e = parser.parse(l.clone(), 0).unwrap();
                e.seq = seq;
                e
            })
            .collect();
        lap(&mut phases.parse);
        for (partition, group) in by_partition(events.iter(), |e| e.time_ms) {
            let batch = silver.batch(&group, "bench@1", &mismatches);
            lap(&mut phases.arrow);
            let (a, b) = (group[0].seq, group[group.len() - 1].seq);
            files.append("silver", &partition, &batch, (a, b)).unwrap();
            lap(&mut phases.parquet);
        }
    }
    let finished = files.finish_all().unwrap();
    lap(&mut phases.parquet);
    let bytes = write(dir, finished);
    lap(&mut phases.disk);
    (started.elapsed().as_secs_f64(), bytes, phases)
}

/// The JSON's own shape for the same fields, as arrow-json decodes it.
fn nested_schema() -> Arc<Schema> {
    let s = |n: &str| Field::new(n, DataType::Utf8, true);
    let i = |n: &str| Field::new(n, DataType::Int64, true);
    let b = |n: &str| Field::new(n, DataType::Boolean, true);
    let pair = |n: &str| {
        Field::new(
            n,
            DataType::Struct(Fields::from(vec![i("old"), i("new")])),
            true,
        )
    };
    Arc::new(Schema::new(vec![
        s("type"),
        s("wiki"),
        s("server_name"),
        s("title"),
        i("namespace"),
        s("user"),
        b("bot"),
        b("minor"),
        i("id"),
        pair("revision"),
        pair("length"),
        s("comment"),
        s("log_type"),
        s("log_action"),
        i("timestamp"),
        Field::new(
            "meta",
            DataType::Struct(Fields::from(vec![
                s("id"),
                s("dt"),
                s("domain"),
                s("request_id"),
            ])),
            true,
        ),
    ]))
}

fn arrow_json_pass(ndjson: &[u8], dir: &std::path::Path, batch: usize) -> (f64, u64) {
    let schema = nested_schema();
    let started = Instant::now();
    let mut files = EpochFiles::new("bench", 128 << 20, Vec::new());
    let mut decoder = arrow_json::ReaderBuilder::new(schema)
        .with_batch_size(batch)
        .build_decoder()
        .unwrap();
    let mut rest = ndjson;
    let mut seq = 0u64;
    loop {
        let read = decoder.decode(rest).unwrap();
        rest = &rest[read..];
        match decoder.flush().unwrap() {
            Some(batch) => {
                let n = batch.num_rows() as u64;
                files
                    .append("silver", "all", &batch, (seq + 1, seq + n))
                    .unwrap();
                seq += n;
            }
            None if rest.is_empty() => break,
            None => {}
        }
    }
    let bytes = write(dir, files.finish_all().unwrap());
    (started.elapsed().as_secs_f64(), bytes)
}

fn summary(times: &mut [f64]) -> (f64, f64) {
    times.sort_by(f64::total_cmp);
    (times[times.len() / 2], times[0])
}

fn main() {
    let events = env("WEIR_BENCH_EVENTS", 1_000_000);
    let passes = env("WEIR_BENCH_PASSES", 3).max(1);
    let batch = env("WEIR_BENCH_BATCH", BATCH).max(1);
    let generator = Generator::new(GenConfig::default());
    let lines: Vec<Bytes> = (0..events as u64)
        .map(|i| Bytes::from(generator.event(i).data))
        .collect();
    let mut ndjson = Vec::new();
    for l in &lines {
        ndjson.extend_from_slice(l);
        ndjson.push(b'\n');
    }
    let mean = ndjson.len() / events;
    let columns = silver_columns();
    println!(
        "lake_throughput: {events} generated events (mean {mean} bytes), batches of {batch}, {} silver columns, zstd(1), local disk, one core",
        columns.len() + 5
    );
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    let (mut our_bytes, mut their_bytes) = (0, 0);
    let mut best_phases = Phases::default();
    for _ in 0..passes {
        let dir = tempfile::tempdir().unwrap();
        let (t, b, phases) = weir_pass(&lines, &columns, &dir.path().join("weir"), batch);
        if ours.iter().all(|&o| t < o) {
            best_phases = phases;
        }
        ours.push(t);
        our_bytes = b;
        let (t, b) = arrow_json_pass(&ndjson, &dir.path().join("arrow-json"), batch);
        theirs.push(t);
        their_bytes = b;
    }
    let (ours_median, ours_best) = summary(&mut ours);
    let (theirs_median, theirs_best) = summary(&mut theirs);
    let per_million = |bytes: u64| bytes as f64 / events as f64 * 1e6 / (1 << 20) as f64;
    let rate = |t: f64| events as f64 / t;
    println!(
        "  weir (parse once, Arrow from slots):  {:>9.0} rows/s median, {:>9.0} best; {:.1} MB per million rows",
        rate(ours_median),
        rate(ours_best),
        per_million(our_bytes)
    );
    let us = |t: f64| t / events as f64 * 1e6;
    println!(
        "    per row in the best pass: parse {:.2} µs, Arrow {:.2} µs, Parquet encode {:.2} µs, disk {:.2} µs",
        us(best_phases.parse),
        us(best_phases.arrow),
        us(best_phases.parquet),
        us(best_phases.disk)
    );
    println!(
        "  arrow-json decoder (baseline):        {:>9.0} rows/s median, {:>9.0} best; {:.1} MB per million rows",
        rate(theirs_median),
        rate(theirs_best),
        per_million(their_bytes)
    );
    println!(
        "  ratio weir / arrow-json: {:.2} (median); raw NDJSON is {:.0} MB per million rows",
        theirs_median / ours_median,
        mean as f64
    );
}
