//! Per-plugin counters: events in / kept / dropped / quarantined, call latency, failures by kind, and the
//! counters and gauges the plugin reports itself.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use super::context::StagedMetrics;
use super::failure::FailureKind;

/// A plugin may report at most this many distinct metric names; more would blow up the metrics endpoint.
const MAX_PLUGIN_METRICS: usize = 64;

/// Upper bounds of the call-latency buckets, in microseconds (Prometheus `le` values).
pub const LATENCY_BUCKETS_US: [u64; 12] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000,
];

#[derive(Clone, Debug, Default, Serialize)]
pub struct PluginStats {
    pub events_in: u64,
    pub kept: u64,
    pub dropped: u64,
    pub quarantined: u64,
    pub dropped_by_rule: BTreeMap<String, u64>,
    pub quarantined_by_reason: BTreeMap<String, u64>,
    pub rows_emitted: u64,
    pub calls: u64,
    /// Time spent inside the plugin, all calls together.
    pub call_time_us: u64,
    pub call_time_max_us: u64,
    /// Calls per latency bucket; the last slot counts calls slower than every bound.
    pub call_latency_buckets: [u64; LATENCY_BUCKETS_US.len() + 1],
    pub failures: BTreeMap<FailureKind, u64>,
    /// Fresh instances created after a failure.
    pub instance_restarts: u64,
    pub guest_log_dropped_bytes: u64,
    /// The instance's linear memory now, in bytes: its high-water mark, since Wasm memory never shrinks.
    pub memory_bytes: u64,
    /// The size of the plugin's last state snapshot, in bytes (0 for plugins without one).
    pub snapshot_bytes: u64,
    /// ... and compressed, as the host holds it and commits save it (of the last restore point packed).
    pub snapshot_packed_bytes: u64,
    /// Snapshots taken (at commits, and as restore points between them) and their time, part of `call_time_us`.
    pub snapshots: u64,
    pub snapshot_time_us: u64,
    pub counters: BTreeMap<String, u64>,
    pub gauges: BTreeMap<String, f64>,
}

impl PluginStats {
    pub fn record_call(&mut self, elapsed: Duration) {
        let us = elapsed.as_micros() as u64;
        self.calls += 1;
        self.call_time_us += us;
        self.call_time_max_us = self.call_time_max_us.max(us);
        let bucket = LATENCY_BUCKETS_US
            .iter()
            .position(|&le| us <= le)
            .unwrap_or(LATENCY_BUCKETS_US.len());
        self.call_latency_buckets[bucket] += 1;
    }

    pub fn record_failure(&mut self, kind: FailureKind) {
        *self.failures.entry(kind).or_default() += 1;
    }

    pub fn merge_metrics(&mut self, staged: &mut StagedMetrics) {
        for (name, delta) in std::mem::take(&mut staged.counters) {
            if self.counters.len() < MAX_PLUGIN_METRICS || self.counters.contains_key(&name) {
                *self.counters.entry(name).or_default() += delta;
            }
        }
        for (name, value) in std::mem::take(&mut staged.gauges) {
            if self.gauges.len() < MAX_PLUGIN_METRICS || self.gauges.contains_key(&name) {
                self.gauges.insert(name, value);
            }
        }
    }

    pub fn mean_call_us(&self) -> f64 {
        if self.calls == 0 {
            0.0
        } else {
            self.call_time_us as f64 / self.calls as f64
        }
    }
}
