//! Events/s through one Rust plugin that filters ~1 kB Wikimedia events on two fields (`meta.domain`, `bot`),
//! as a sandboxed component and compiled natively, in the same process, at batch sizes 1, 64 and 1024.
//!
//! Both paths do the same work per event: project the two fields out of the host's events into a batch, decide,
//! and tally the verdict. JSON parsing is measured separately (it happens once per event whatever the number
//! of plugins). Run with `make bench` (or `cargo bench -p weir --bench plugin_throughput`).

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rust_drop_bots::DropBots;
use serde_json::Value;
use support::decide_native;
use weir::event::{Event, Projection};
use weir::pipeline::chain::Chain;
use weir::runtime::types::Verdict;
use weir::runtime::{Clock, Limits, Loader, Plugin};
use weir_sdk::Plugin as _;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The working set: about what one or two micro-batches of the pipeline hold between parse and commit, so
/// the events are as warm in cache as they are in the real hot path (a 100k-event set spread over ~500 MB
/// measures DRAM latency instead).
const EVENTS: usize = 4096;
/// Each measurement runs at least this long (whole passes over the events).
const MIN_TIME: Duration = Duration::from_millis(1500);

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let wasm = root.join("target/wasm32-wasip2/plugin/rust_drop_bots.wasm");
    assert!(
        wasm.exists(),
        "{} is missing: run `make plugins` first",
        wasm.display()
    );
    let fixture = root.join("../shared/fixtures/wikimedia/events/recentchange.verbatim.ndjson");
    let lines =
        realistic_lines(&std::fs::read_to_string(&fixture).expect("read the Wikimedia fixture"));
    let mean_size = lines.iter().map(String::len).sum::<usize>() / lines.len();

    let loader = Loader::new(None);
    let loaded = loader.load(&wasm).unwrap();
    let layout_chain = Chain::new(vec![
        Plugin::start(loaded.clone(), "{}", Limits::default(), Clock::System).unwrap(),
    ])
    .unwrap();
    let parser = layout_chain.parser();
    let lines: Vec<Bytes> = lines.into_iter().map(Bytes::from).collect();
    let (parse_rate, _) = measure(|| {
        lines
            .iter()
            .filter(|l| std::hint::black_box(parser.parse((*l).clone(), 0)).is_ok())
            .count()
    });
    let events: Vec<Event> = lines
        .iter()
        .map(|l| parser.parse(l.clone(), 0).unwrap())
        .collect();
    println!(
        "plugin throughput: {EVENTS} distinct events, mean {mean_size} bytes, filter on meta.domain and bot"
    );
    println!(
        "  JSON parse (once per event, any number of plugins): {:>12.0} events/s",
        parse_rate
    );
    println!("  component compile {:.1} ms", loaded.compile_ms);
    println!();
    println!(
        "  {:>6}  {:>14}  {:>14}  {:>6}  {:>8}",
        "batch", "wasm ev/s", "native ev/s", "ratio", "kept"
    );
    for batch in [1usize, 64, 1024] {
        let mut plugin =
            Plugin::start(loaded.clone(), "{}", Limits::default(), Clock::System).unwrap();
        let projection = Projection::new(parser.layout(), plugin.plan()).unwrap();
        let (wasm_rate, wasm_kept) = measure(|| {
            let mut kept = 0;
            for chunk in events.chunks(batch) {
                let batch = projection.batch(chunk);
                let result = plugin.process(&batch);
                kept += result
                    .verdicts
                    .iter()
                    .filter(|v| matches!(v, Verdict::Keep))
                    .count();
            }
            kept
        });

        let (mut native, plan) = DropBots::init("{}").unwrap();
        assert_eq!(plan.reads, plugin.plan().reads);
        let (native_rate, native_kept) = measure(|| {
            let mut kept = 0;
            for chunk in events.chunks(batch) {
                let (result, _) = decide_native(&mut native, &projection, chunk);
                kept += result
                    .verdicts
                    .iter()
                    .filter(|v| matches!(v, Verdict::Keep))
                    .count();
            }
            kept
        });
        assert_eq!(
            wasm_kept, native_kept,
            "the component and the native build disagree"
        );
        println!(
            "  {batch:>6}  {wasm_rate:>14.0}  {native_rate:>14.0}  {:>6.2}  {wasm_kept:>8}",
            wasm_rate / native_rate
        );
    }
}

/// Runs `pass` (one pass over all events) until `MIN_TIME` has elapsed; returns events/s and the last result.
fn measure(mut pass: impl FnMut() -> usize) -> (f64, usize) {
    let mut result = pass(); // warm-up
    let started = Instant::now();
    let mut passes = 0;
    while started.elapsed() < MIN_TIME {
        result = pass();
        passes += 1;
    }
    (
        (passes * EVENTS) as f64 / started.elapsed().as_secs_f64(),
        result,
    )
}

/// `EVENTS` real events, cycled, each with a fresh id; about a third are bots, as in the live stream.
fn realistic_lines(fixture: &str) -> Vec<String> {
    let docs: Vec<Value> = fixture
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (0..EVENTS)
        .map(|i| {
            let mut doc = docs[i % docs.len()].clone();
            doc["meta"]["id"] = Value::String(format!("00000000-0000-4000-8000-{i:012}"));
            doc.to_string()
        })
        .collect()
}
