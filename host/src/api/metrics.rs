//! `/metrics`: Prometheus text. Names follow `weir_<name>_<unit>_total` for counters; errors carry
//! `error_type` and `stage` labels, and intentional drops (`weir_events_dropped_total{rule}`) are counted apart
//! from anything lost (nothing is: every event is in a table, dropped by a rule, or quarantined).

use std::fmt::Write;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use super::AppState;
use crate::runtime::stats::{LATENCY_BUCKETS_US, PluginStats};

fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Out(String);

impl Out {
    fn metric(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }
    fn value(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        let labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", label(v)))
            .collect();
        let _ = writeln!(self.0, "{name}{{{}}} {value}", labels.join(","));
    }
}

pub async fn render(State(state): State<AppState>) -> impl IntoResponse {
    let s = &state.shared;
    let p = s.pipeline.as_str();
    let c = &s.counters;
    let mut o = Out(String::with_capacity(16 << 10));
    let counters = [
        (
            "weir_events_received_total",
            "Events the pipeline took from the stream.",
            &c.received,
        ),
        (
            "weir_silver_rows_total",
            "Events written to silver.",
            &c.silver,
        ),
        (
            "weir_events_dropped_total",
            "Events dropped by a plugin rule (see weir_plugin_dropped_total).",
            &c.dropped,
        ),
        (
            "weir_events_quarantined_total",
            "Events quarantined (bronze and silver layers).",
            &c.quarantined,
        ),
        (
            "weir_gold_rows_total",
            "Rows emitted by aggregates.",
            &c.gold_rows,
        ),
        ("weir_commits_total", "Lake commits.", &c.commits),
        (
            "weir_committed_events_total",
            "Events in committed epochs.",
            &c.committed_events,
        ),
        (
            "weir_lake_written_bytes_total",
            "Parquet bytes committed.",
            &c.bytes_written,
        ),
        (
            "weir_lake_type_mismatches_total",
            "Silver values that did not fit their column (stored as null).",
            &c.type_mismatches,
        ),
        (
            "weir_lake_compactions_total",
            "Compactions of the lake's small files that committed.",
            &c.compactions,
        ),
        (
            "weir_lake_compaction_failures_total",
            "Compactions that failed (tried again at the next interval).",
            &c.compaction_failures,
        ),
        (
            "weir_lake_compacted_files_total",
            "Small files merged into larger ones by compaction.",
            &c.compacted_files,
        ),
        (
            "weir_pipeline_adoptions_total",
            "Hosts gone from the pipeline whose open windows this host closed and wrote.",
            &c.adoptions,
        ),
        (
            "weir_nats_pulls_reopened_total",
            "Pulls from the consumer opened anew: no messages came for 15 s though the consumer had some to deliver.",
            &c.pulls_reopened,
        ),
        (
            "weir_plugin_swaps_total",
            "Plugin versions deployed while running.",
            &c.swaps,
        ),
        (
            "weir_plugin_rollbacks_total",
            "Plugin versions rolled back.",
            &c.rollbacks,
        ),
        (
            "weir_plugin_cluster_follows_total",
            "Deploys and rollbacks made on another host of the pipeline and applied here (counted in swaps and rollbacks too).",
            &c.cluster_followed,
        ),
        (
            "weir_plugin_cluster_refusals_total",
            "Deploys and rollbacks made on another host of the pipeline that this host did not follow (its self-test refused the version, say): see its log.",
            &c.cluster_refused,
        ),
        (
            "weir_watermark_ticks_total",
            "Ticks read back from the stream: a quiet stream's, which move the watermark on (events.idle_close).",
            &c.ticks,
        ),
    ];
    for (name, help, value) in counters {
        o.metric(name, "counter", help);
        o.value(name, &[("pipeline", p)], value.load(Ordering::Relaxed));
    }
    o.metric(
        "weir_redeliveries_skipped_total",
        "counter",
        "Redelivered messages skipped (already committed, or already in the open epoch).",
    );
    o.value(
        "weir_redeliveries_skipped_total",
        &[("pipeline", p), ("state", "committed")],
        c.skipped_committed.load(Ordering::Relaxed),
    );
    o.value(
        "weir_redeliveries_skipped_total",
        &[("pipeline", p), ("state", "in_flight")],
        c.skipped_in_flight.load(Ordering::Relaxed),
    );
    o.metric(
        "weir_consumer_pending_messages",
        "gauge",
        "Messages of the stream this host has yet to take or ack (a shared consumer's pending and unacked; for an exclusive reader, those after the newest read), measured every 5 s.",
    );
    o.value(
        "weir_consumer_pending_messages",
        &[("pipeline", p)],
        c.pending.load(Ordering::Relaxed),
    );
    o.metric(
        "weir_lake_store_retries_total",
        "counter",
        "Failed requests to the lake's store, each retried with backoff (the store is unreachable or failing while these grow).",
    );
    o.value(
        "weir_lake_store_retries_total",
        &[("pipeline", p)],
        crate::lake::store_retries(),
    );
    o.metric(
        "weir_skipped_events_total",
        "counter",
        "Events passed on unchanged by a stage whose plugin failed on them (the stage's on_error is \"skip\").",
    );
    for (stage, n) in c.skipped_events.lock().expect("not poisoned").iter() {
        o.value(
            "weir_skipped_events_total",
            &[("pipeline", p), ("stage", stage)],
            *n,
        );
    }
    o.metric(
        "weir_pipeline_thread_seconds_total",
        "counter",
        "Time the pipeline's thread spent per phase (waiting for messages, reading, plugins, watermark, tables, state, commit).",
    );
    for phase in crate::pipeline::shared::Phase::ALL {
        o.value(
            "weir_pipeline_thread_seconds_total",
            &[("pipeline", p), ("phase", phase.name())],
            c.phase_us[phase as usize].load(Ordering::Relaxed) as f64 / 1e6,
        );
    }
    o.metric(
        "weir_commit_duration_seconds",
        "gauge",
        "How long the last commit took.",
    );
    o.value(
        "weir_commit_duration_seconds",
        &[("pipeline", p)],
        c.last_commit_duration_us.load(Ordering::Relaxed) as f64 / 1e6,
    );
    // Event-time progress: `time() - weir_watermark_timestamp_seconds` is how far behind the aggregates are
    // (the watermark delay included). Absent until the first watermark.
    let watermark = c.watermark_ms.load(Ordering::Relaxed);
    if watermark != 0 {
        o.metric(
            "weir_watermark_timestamp_seconds",
            "gauge",
            "The aggregates' watermark (event time): windows that end at or before it have closed.",
        );
        o.value(
            "weir_watermark_timestamp_seconds",
            &[("pipeline", p)],
            watermark as f64 / 1e3,
        );
    }
    o.metric(
        "weir_ready",
        "gauge",
        "1 when NATS, the store and the plugins are all up.",
    );
    o.value("weir_ready", &[("pipeline", p)], u8::from(s.is_ready()));
    let (swaps, p50, p99) = s.pauses.summary();
    o.metric(
        "weir_plugin_swap_pause_seconds",
        "summary",
        "How long a hot swap paused the pipeline.",
    );
    o.value(
        "weir_plugin_swap_pause_seconds",
        &[("pipeline", p), ("quantile", "0.5")],
        p50 as f64 / 1e6,
    );
    o.value(
        "weir_plugin_swap_pause_seconds",
        &[("pipeline", p), ("quantile", "0.99")],
        p99 as f64 / 1e6,
    );
    o.value(
        "weir_plugin_swap_pause_seconds_count",
        &[("pipeline", p)],
        swaps,
    );

    let plugins = s.plugins.load_full();
    o.metric(
        "weir_plugin_events_total",
        "counter",
        "Events through a plugin, by verdict.",
    );
    for info in plugins.iter() {
        let st = &info.stats;
        for (verdict, n) in [
            ("in", st.events_in),
            ("kept", st.kept),
            ("dropped", st.dropped),
            ("quarantined", st.quarantined),
            ("failed", st.failed),
        ] {
            o.value(
                "weir_plugin_events_total",
                &[
                    ("pipeline", p),
                    ("stage", &info.stage),
                    ("verdict", verdict),
                ],
                n,
            );
        }
    }
    o.metric(
        "weir_plugin_dropped_total",
        "counter",
        "Events a plugin dropped, by rule (intentional, counted).",
    );
    for info in plugins.iter() {
        for (rule, n) in &info.stats.dropped_by_rule {
            o.value(
                "weir_plugin_dropped_total",
                &[("pipeline", p), ("stage", &info.stage), ("rule", rule)],
                n,
            );
        }
    }
    o.metric(
        "weir_plugin_quarantined_total",
        "counter",
        "Events a plugin quarantined, by reason.",
    );
    for info in plugins.iter() {
        for (reason, n) in &info.stats.quarantined_by_reason {
            o.value(
                "weir_plugin_quarantined_total",
                &[("pipeline", p), ("stage", &info.stage), ("reason", reason)],
                n,
            );
        }
    }
    o.metric(
        "weir_plugin_errors_total",
        "counter",
        "Failed plugin calls (each replaced the instance), by error type.",
    );
    for info in plugins.iter() {
        for (kind, n) in &info.stats.failures {
            o.value(
                "weir_plugin_errors_total",
                &[
                    ("pipeline", p),
                    ("stage", &info.stage),
                    ("error_type", kind.reason()),
                ],
                n,
            );
        }
    }
    o.metric(
        "weir_plugin_call_seconds",
        "histogram",
        "Time of one call into a plugin.",
    );
    for info in plugins.iter() {
        let st = &info.stats;
        let mut cumulative = 0;
        for (i, le) in LATENCY_BUCKETS_US.iter().enumerate() {
            cumulative += st.call_latency_buckets[i];
            let le = format!("{}", *le as f64 / 1e6);
            o.value(
                "weir_plugin_call_seconds_bucket",
                &[("pipeline", p), ("stage", &info.stage), ("le", &le)],
                cumulative,
            );
        }
        o.value(
            "weir_plugin_call_seconds_bucket",
            &[("pipeline", p), ("stage", &info.stage), ("le", "+Inf")],
            st.calls,
        );
        o.value(
            "weir_plugin_call_seconds_sum",
            &[("pipeline", p), ("stage", &info.stage)],
            st.call_time_us as f64 / 1e6,
        );
        o.value(
            "weir_plugin_call_seconds_count",
            &[("pipeline", p), ("stage", &info.stage)],
            st.calls,
        );
    }
    o.metric(
        "weir_plugin_reported_total",
        "counter",
        "Counters the plugins report themselves.",
    );
    for info in plugins.iter() {
        for (name, n) in &info.stats.counters {
            o.value(
                "weir_plugin_reported_total",
                &[("pipeline", p), ("stage", &info.stage), ("name", name)],
                n,
            );
        }
    }
    o.metric(
        "weir_plugin_reported",
        "gauge",
        "Gauges the plugins report themselves (quality pass_rate, alert_level...).",
    );
    for info in plugins.iter() {
        for (name, v) in &info.stats.gauges {
            o.value(
                "weir_plugin_reported",
                &[("pipeline", p), ("stage", &info.stage), ("name", name)],
                v,
            );
        }
    }
    for (name, kind, help, value) in [
        (
            "weir_plugin_instance_restarts_total",
            "counter",
            "Fresh instances a plugin was given after a failed call.",
            // As f64, so seconds fit the same table (whole numbers print without a fraction).
            (|st: &PluginStats| st.instance_restarts as f64) as fn(&PluginStats) -> f64,
        ),
        (
            "weir_plugin_memory_bytes",
            "gauge",
            "A plugin instance's linear memory (its high-water mark: Wasm memory never shrinks).",
            |st| st.memory_bytes as f64,
        ),
        (
            "weir_plugin_snapshot_bytes",
            "gauge",
            "The size of a plugin's last state snapshot, as the plugin returned it.",
            |st| st.snapshot_bytes as f64,
        ),
        (
            "weir_plugin_snapshot_packed_bytes",
            "gauge",
            "The same snapshot compressed, as the host holds it (its restore point; the last one packed) and commits save it.",
            |st| st.snapshot_packed_bytes as f64,
        ),
        (
            "weir_plugin_snapshots_total",
            "counter",
            "State snapshots taken: at each commit, and as restore points between commits.",
            |st| st.snapshots as f64,
        ),
        (
            "weir_plugin_snapshot_seconds_total",
            "counter",
            "Time spent taking state snapshots (part of weir_plugin_call_seconds).",
            |st| st.snapshot_time_us as f64 / 1e6,
        ),
    ] {
        o.metric(name, kind, help);
        for info in plugins.iter() {
            o.value(
                name,
                &[("pipeline", p), ("stage", &info.stage)],
                value(&info.stats),
            );
        }
    }
    if let Some(ingest) = s.ingest.load_full().as_ref() {
        let ingest_counters = [
            (
                "weir_ingest_events_received_total",
                "Events read from the source.",
                &ingest.received,
            ),
            (
                "weir_ingest_events_published_total",
                "Events stored in the stream.",
                &ingest.publish.published,
            ),
            (
                "weir_ingest_duplicates_total",
                "Events the stream dropped as duplicates (replays).",
                &ingest.publish.duplicates,
            ),
            (
                "weir_ingest_invalid_json_total",
                "Events that were not JSON (kept in bronze).",
                &ingest.invalid_json,
            ),
            (
                "weir_ingest_oversize_total",
                "Events over the size limit (quarantined).",
                &ingest.oversize,
            ),
            (
                "weir_ingest_reconnects_total",
                "Reconnections to the source.",
                &ingest.reconnects,
            ),
            (
                "weir_ingest_received_bytes_total",
                "Bytes read from the source.",
                &ingest.bytes,
            ),
        ];
        for (name, help, value) in ingest_counters {
            o.metric(name, "counter", help);
            o.value(name, &[("pipeline", p)], value.load(Ordering::Relaxed));
        }
        o.metric(
            "weir_ingest_connected",
            "gauge",
            "1 while a connection to the source is open.",
        );
        o.value(
            "weir_ingest_connected",
            &[("pipeline", p)],
            u8::from(ingest.connected.load(Ordering::Relaxed)),
        );
        o.metric(
            "weir_ingest_lag_seconds",
            "gauge",
            "How far the newest event received is behind the clock.",
        );
        o.value(
            "weir_ingest_lag_seconds",
            &[("pipeline", p)],
            ingest.lag_ms() as f64 / 1e3,
        );
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], o.0)
}
