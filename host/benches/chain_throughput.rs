//! Events/s through the full standard chain, filter → enrich → dedupe → quality → aggregate (gold_wiki), over
//! realistic ~1.1 kB events with the host's JSON parse included, as sandboxed components and compiled natively,
//! in one run. Both paths parse every line, project each stage's fields from the host document, apply each
//! stage's writes to it, and advance the watermark after every batch.
//!
//! Run with `make bench` (or `cargo bench -p weir --bench chain_throughput`).

use std::path::Path;
use std::time::Instant;

use serde_json::Value;
use weir::event::{Event, EventShape, JsonPath, Projection};
use weir::pipeline::chain::Chain;
use weir::runtime::types;
use weir::runtime::{Clock, Limits, Loader, Plugin};
use weir_sdk::Plugin as _;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const EVENTS: usize = 100_000;
const BATCH: usize = 1024;
const NOW: i64 = 1_740_000_000_000;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let wasm_dir = root.join("target/wasm32-wasip2/plugin");
    let fixture = root.join("../shared/fixtures/wikimedia/events/recentchange.verbatim.ndjson");
    let lines =
        realistic_lines(&std::fs::read_to_string(&fixture).expect("read the Wikimedia fixture"));
    let mean = lines.iter().map(String::len).sum::<usize>() / lines.len();
    let gold_wiki =
        std::fs::read_to_string(root.join("plugins/aggregate/configs/gold_wiki.json")).unwrap();
    let filter = r#"{"rules": [{"name": "namespaces", "path": "namespace", "when": {"op": "in", "values": [0, 1, 2, 3, 6, 14]}, "action": "allow"}]}"#;
    let configs = [filter, "{}", "{}", "{}", gold_wiki.as_str()];
    let names = ["filter", "enrich", "dedupe", "quality", "aggregate"];
    let shape = EventShape::default();

    // Components.
    let loader = Loader::new(None);
    let plugins = names
        .iter()
        .zip(configs)
        .map(|(name, config)| {
            let path = wasm_dir.join(format!("weir_plugin_{name}.wasm"));
            assert!(
                path.exists(),
                "{} is missing: run `make plugins` first",
                path.display()
            );
            Plugin::start(
                loader.load(&path).unwrap(),
                config,
                Limits::default(),
                Clock::Fixed(NOW),
            )
            .unwrap()
        })
        .collect();
    let mut chain = Chain::new(plugins).unwrap();
    let started = Instant::now();
    let (mut kept, mut rows) = (0, 0);
    let mut max_t = i64::MIN;
    for batch in lines.chunks(BATCH) {
        let events: Vec<Event> = batch
            .iter()
            .map(|l| shape.parse(l.as_bytes(), NOW).unwrap())
            .collect();
        max_t = events.iter().map(|e| e.time_ms).fold(max_t, i64::max);
        let out = chain.run(events);
        kept += out.kept.len();
        rows += out.rows.len() + chain.on_watermark(max_t - 60_000).0.len();
    }
    rows += chain.on_watermark(i64::MAX).0.len();
    let wasm_rate = EVENTS as f64 / started.elapsed().as_secs_f64();

    // Native: the same plugin code, called directly.
    weir_sdk::clock::set_now_ms(Some(NOW));
    let mut native = Native::new(&configs);
    let started = Instant::now();
    let (mut native_kept, mut native_rows) = (0, 0);
    let mut max_t = i64::MIN;
    for batch in lines.chunks(BATCH) {
        let events: Vec<Event> = batch
            .iter()
            .map(|l| shape.parse(l.as_bytes(), NOW).unwrap())
            .collect();
        max_t = events.iter().map(|e| e.time_ms).fold(max_t, i64::max);
        let (k, r) = native.run(events);
        native_kept += k;
        native_rows += r + native.aggregate.on_watermark(max_t - 60_000).len();
    }
    native_rows += native.aggregate.on_watermark(i64::MAX).len();
    let native_rate = EVENTS as f64 / started.elapsed().as_secs_f64();
    assert_eq!(
        (kept, rows),
        (native_kept, native_rows),
        "the components and the native builds disagree"
    );

    // Parse alone, for scale.
    let started = Instant::now();
    let parsed = lines
        .iter()
        .filter(|l| std::hint::black_box(shape.parse(l.as_bytes(), NOW)).is_ok())
        .count();
    let parse_rate = parsed as f64 / started.elapsed().as_secs_f64();

    println!(
        "chain throughput: filter → enrich → dedupe → quality → aggregate(gold_wiki), {EVENTS} events of ~{mean} B, batch {BATCH}, host parse included"
    );
    println!("  components  {wasm_rate:>10.0} events/s");
    println!("  native      {native_rate:>10.0} events/s");
    println!("  ratio       {:>10.2}", wasm_rate / native_rate);
    println!("  parse alone {parse_rate:>10.0} events/s");
    println!("  kept {kept}, gold rows {rows}");
    println!("  time inside each component, per input event of the run:");
    for stage in chain.stages() {
        let stats = stage.plugin().stats();
        println!(
            "    {:<16} {:>6.2} µs",
            stage.plugin().label(),
            stats.call_time_us as f64 / EVENTS as f64
        );
    }
}

/// The five plugins compiled natively, with the host's projection and write-back.
struct Native {
    filter: (weir_plugin_filter::Filter, Vec<JsonPath>, Projection),
    enrich: (weir_plugin_enrich::Enrich, Vec<JsonPath>, Projection),
    dedupe: (weir_plugin_dedupe::Dedupe, Vec<JsonPath>, Projection),
    quality: (weir_plugin_quality::Quality, Vec<JsonPath>, Projection),
    aggregate: weir_plugin_aggregate::Aggregate,
    aggregate_reads: Vec<JsonPath>,
}

fn stage<P: weir_sdk::Plugin>(config: &str) -> (P, Vec<JsonPath>, Projection) {
    let (plugin, plan) = P::init(config).unwrap();
    let reads = plan
        .reads
        .iter()
        .map(|p| JsonPath::parse(p).unwrap())
        .collect();
    let host_plan = types::Plan {
        reads: plan.reads.clone(),
        writes: plan.writes.clone(),
        needs_payload: false,
        needs_attributes: false,
        state: types::StateNeeds {
            keyed: false,
            snapshot: false,
        },
        emits: plan.emits.clone(),
    };
    (plugin, reads, Projection::from_plan(&host_plan).unwrap())
}

fn project(event: &Event, reads: &[JsonPath]) -> weir_sdk::Event {
    weir_sdk::Event {
        id: event.id.clone(),
        key: event.key.clone(),
        time_ms: event.time_ms,
        fields: reads
            .iter()
            .map(|p| p.get(&event.doc).map(weir_sdk::Value::from))
            .collect(),
        payload: None,
        attributes: Vec::new(),
    }
}

fn to_host(value: weir_sdk::Value) -> types::Value {
    match value {
        weir_sdk::Value::Null => types::Value::Null,
        weir_sdk::Value::Boolean(b) => types::Value::Boolean(b),
        weir_sdk::Value::Integer(i) => types::Value::Integer(i),
        weir_sdk::Value::Float(f) => types::Value::Float(f),
        weir_sdk::Value::Text(s) => types::Value::Text(s),
        weir_sdk::Value::Json(s) => types::Value::Json(s),
    }
}

/// One stage over the surviving events: keep those the plugin keeps, with its writes applied.
fn run_stage<P: weir_sdk::Plugin>(
    stage: &mut (P, Vec<JsonPath>, Projection),
    events: Vec<Event>,
) -> Vec<Event> {
    let projected = events.iter().map(|e| project(e, &stage.1)).collect();
    let output = stage.0.process_batch(projected);
    events
        .into_iter()
        .zip(output.outcomes)
        .filter_map(|(mut event, outcome)| {
            outcome.is_keep().then(|| {
                let writes = outcome
                    .writes
                    .into_iter()
                    .map(|w| types::FieldWrite {
                        field: w.field,
                        value: to_host(w.value),
                    })
                    .collect();
                stage.2.apply(&mut event, writes).unwrap();
                event
            })
        })
        .collect()
}

impl Native {
    fn new(configs: &[&str; 5]) -> Self {
        let (aggregate, plan) = weir_plugin_aggregate::Aggregate::init(configs[4]).unwrap();
        Native {
            filter: stage(configs[0]),
            enrich: stage(configs[1]),
            dedupe: stage(configs[2]),
            quality: stage(configs[3]),
            aggregate,
            aggregate_reads: plan
                .reads
                .iter()
                .map(|p| JsonPath::parse(p).unwrap())
                .collect(),
        }
    }

    fn run(&mut self, events: Vec<Event>) -> (usize, usize) {
        let events = run_stage(&mut self.filter, events);
        let events = run_stage(&mut self.enrich, events);
        let events = run_stage(&mut self.dedupe, events);
        let events = run_stage(&mut self.quality, events);
        let projected = events
            .iter()
            .map(|e| project(e, &self.aggregate_reads))
            .collect();
        let output = self.aggregate.process_batch(projected);
        (
            output.outcomes.iter().filter(|o| o.is_keep()).count(),
            output.rows.len(),
        )
    }
}

/// `EVENTS` real events, cycled, each with a fresh id and a time spread over ~3 hours before `NOW`.
fn realistic_lines(fixture: &str) -> Vec<String> {
    let docs: Vec<Value> = fixture
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (0..EVENTS)
        .map(|i| {
            let mut doc = docs[i % docs.len()].clone();
            doc["meta"]["id"] = Value::String(format!("00000000-0000-4000-8000-{i:012}"));
            let t = NOW - 3_000_000 + (i as i64) * 25;
            let secs = t / 1000;
            doc["meta"]["dt"] = Value::String(format!(
                "2025-02-19T{:02}:{:02}:{:02}.{:03}Z",
                (secs / 3600) % 24,
                (secs / 60) % 60,
                secs % 60,
                t % 1000
            ));
            doc.to_string()
        })
        .collect()
}
