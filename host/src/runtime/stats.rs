//! Per-plugin counters: events in / kept / dropped / quarantined / failed on, call latency, failures by kind, and the
//! counters and gauges the plugin reports itself.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use super::context::StagedMetrics;
use super::failure::FailureKind;

/// A plugin may report at most this many distinct metric names; more would blow up the metrics endpoint.
const MAX_PLUGIN_METRICS: usize = 64;

/// Distinct drop rules or quarantine reasons counted per plugin (and per pipeline); the rest count under
/// `other`. The plugin chooses these strings: one that put an event's id in its reason would otherwise grow
/// the host's memory and `/metrics` with every event.
pub const MAX_LABELS: usize = 256;

/// The longest rule or reason kept as a label, in bytes; longer ones are cut at a character boundary.
const MAX_LABEL_BYTES: usize = 128;

/// Counts one more for `label` in `counts`, within [`MAX_LABELS`] and [`MAX_LABEL_BYTES`]; allocates the
/// label only the first time it is seen (this runs per event).
pub fn count_label(counts: &mut BTreeMap<String, u64>, label: &str) {
    let mut end = label.len().min(MAX_LABEL_BYTES);
    while !label.is_char_boundary(end) {
        end -= 1;
    }
    let label = &label[..end];
    if let Some(n) = counts.get_mut(label) {
        *n += 1;
    } else if counts.len() < MAX_LABELS {
        counts.insert(label.to_string(), 1);
    } else {
        *counts.entry("other".to_string()).or_default() += 1;
    }
}

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
    /// Events the plugin failed on (trap, timeout, bad output): their verdict is the host's, and where they
    /// went (quarantine, passed on, dropped) is their stage's `on_error`'s to say. Not in the three above.
    pub failed: u64,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A plugin that makes every reason unique (an event id in it) fills at most `MAX_LABELS` labels, the
    /// rest count under `other`, and no count is lost; a long label is cut and still counted as one.
    #[test]
    fn labels_are_bounded_and_nothing_is_lost() {
        let mut counts = BTreeMap::new();
        for i in 0..1000 {
            count_label(&mut counts, &format!("bad event {i}"));
        }
        assert_eq!(counts.len(), MAX_LABELS + 1);
        assert_eq!(counts["other"], 1000 - MAX_LABELS as u64);
        assert_eq!(counts.values().sum::<u64>(), 1000);

        let mut counts = BTreeMap::new();
        let long = "é".repeat(200);
        count_label(&mut counts, &long);
        count_label(&mut counts, &long);
        let (label, n) = counts.iter().next().unwrap();
        assert!(label.len() <= MAX_LABEL_BYTES && long.starts_with(label.as_str()));
        assert_eq!(*n, 2);
    }
}
