//! Drives one aggregate configuration natively over NDJSON events, the way `weir run` drives the component:
//! batches of 256, a watermark one minute behind the newest event after each batch (closings taken in parts
//! of 8,192 rows), a snapshot every 100,000 events (a commit). Prints the time of each phase.
//!
//! For profiling the aggregate's own code without the sandbox, and for counting its instructions, which are
//! repeatable on a machine whose speed is not:
//!
//! ```sh
//! target/release/weir gen -n 200000 --event-rate 333 > /tmp/events.ndjson
//! cargo build --release -p weir-plugin-aggregate --example drive
//! valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.out \
//!     target/release/examples/drive plugins/aggregate/configs/gold_entity.json /tmp/events.ndjson
//! callgrind_annotate --inclusive=yes /tmp/cg.out | grep -E 'drive::(add|close|snapshot)'
//! ```
//!
//! The fields the standard enrich plugin adds (`bytes_changed`, `is_bot`, `is_anonymous`) are worked out here
//! first, as the gold configurations read them.

use std::time::{Duration, Instant};

use serde_json::Value as Json;
use weir_plugin_aggregate::Aggregate;
use weir_sdk::testing::{get, timed_batch};
use weir_sdk::time::parse_rfc3339_ms;
use weir_sdk::{Batch, Plugin, WATERMARK_PART_ROWS};

const BATCH: usize = 256;
const WATERMARK_DELAY_MS: i64 = 60_000;
const COMMIT_EVENTS: usize = 100_000;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [config, events] = args.as_slice() else {
        eprintln!("usage: drive <aggregate config.json> <events.ndjson>");
        std::process::exit(2);
    };
    let config = std::fs::read_to_string(config).expect("read the config");
    let text = std::fs::read_to_string(events).expect("read the events");
    let docs: Vec<(i64, Json)> = text
        .lines()
        .filter_map(|line| serde_json::from_str::<Json>(line).ok())
        .map(enriched)
        .collect();
    let (mut plugin, plan) = Aggregate::init(&config).expect("a valid config");
    let batches: Vec<(i64, Batch)> = docs
        .chunks(BATCH)
        .map(|chunk| {
            let newest = chunk.iter().map(|(t, _)| *t).max().unwrap_or(0);
            let batch = timed_batch(chunk.iter().map(|(t, doc)| (*t, doc)), &plan);
            (newest, batch)
        })
        .collect();

    let mut times = [Duration::ZERO; 3];
    let (mut rows, mut snapshot_bytes, mut since_commit, mut newest) = (0, 0, 0, i64::MIN);
    for (batch_newest, batch) in &batches {
        let start = Instant::now();
        add(&mut plugin, batch);
        times[0] += start.elapsed();
        newest = newest.max(*batch_newest);
        let start = Instant::now();
        rows += close(&mut plugin, newest - WATERMARK_DELAY_MS);
        times[1] += start.elapsed();
        since_commit += batch.len();
        if since_commit >= COMMIT_EVENTS {
            since_commit = 0;
            let start = Instant::now();
            snapshot_bytes += snapshot(&plugin);
            times[2] += start.elapsed();
        }
    }
    let start = Instant::now();
    rows += close(&mut plugin, i64::MAX);
    times[1] += start.elapsed();
    let per_event = |d: Duration| d.as_secs_f64() * 1e9 / docs.len().max(1) as f64;
    println!(
        "{} events, {rows} rows, {:.1} MB of snapshots; per event: adding {:.0} ns, closing {:.0} ns, \
         snapshots {:.0} ns",
        docs.len(),
        snapshot_bytes as f64 / 1e6,
        per_event(times[0]),
        per_event(times[1]),
        per_event(times[2]),
    );
}

// The phases are functions of their own, never inlined, so that a profile names them.

#[inline(never)]
fn add(plugin: &mut Aggregate, batch: &Batch) {
    std::hint::black_box(plugin.process_batch(batch));
}

#[inline(never)]
fn close(plugin: &mut Aggregate, watermark_ms: i64) -> usize {
    let mut rows = 0;
    loop {
        let part = std::hint::black_box(plugin.on_watermark(watermark_ms));
        rows += part.len();
        if part.len() < WATERMARK_PART_ROWS {
            return rows;
        }
    }
}

#[inline(never)]
fn snapshot(plugin: &Aggregate) -> usize {
    std::hint::black_box(plugin.snapshot()).len()
}

/// An event with its time and the fields the standard enrich plugin adds.
fn enriched(mut doc: Json) -> (i64, Json) {
    let time = get(&doc, "meta.dt")
        .and_then(Json::as_str)
        .and_then(parse_rfc3339_ms)
        .unwrap_or(0);
    // As the enrich plugin writes them: null where their source field is missing.
    let length = |key: &str| get(&doc, &format!("length.{key}")).and_then(Json::as_i64);
    let bytes_changed = length("new").map(|new| new - length("old").unwrap_or(0));
    let is_bot = get(&doc, "bot").and_then(Json::as_bool);
    let is_anonymous = get(&doc, "user")
        .and_then(Json::as_str)
        .map(weir_plugin_enrich::is_anonymous);
    if let Some(map) = doc.as_object_mut() {
        map.insert("bytes_changed".into(), bytes_changed.into());
        map.insert("is_bot".into(), is_bot.into());
        map.insert("is_anonymous".into(), is_anonymous.into());
    }
    (time, doc)
}
